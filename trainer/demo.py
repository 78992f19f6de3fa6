"""`make demo`: the queue end to end on a fresh base dir, driven through the real trainctl.

Until the daemon lands this shows the torch-free core: init, enqueue with priorities, an
invalid file refused, an inbox drop (copy to .name, then mv) taken in by one inbox pass,
pause, status, list and history.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from trainer.config import load_config
from trainer.inbox import InboxScanner, ingest
from trainer.layout import open_base
from trainer.sample_data import write_sample_chat


def trainctl(base: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "ctl", "--base-dir", str(base), *args]
    print(f"\n$ trainctl {' '.join(args)}", flush=True)
    result = subprocess.run(argv, text=True)
    if check and result.returncode not in (0, 3):
        raise SystemExit(f"demo: trainctl {' '.join(args)} exited {result.returncode}")
    return result


def main() -> None:
    root = Path(os.environ.get("DEMO_DIR", "demo")).absolute()
    base, data = root / "base", root / "data"
    shutil.rmtree(root, ignore_errors=True)
    data.mkdir(parents=True)
    files = [write_sample_chat(data / f"chat-{n}.jsonl", 200, seed=n) for n in range(3)]
    (data / "broken.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')

    trainctl(base, "init")
    trainctl(base, "enqueue", str(files[0]), str(files[1]))
    trainctl(base, "enqueue", "--priority", "high", str(files[2]))
    print("\n# an invalid file is refused with its line numbers, and nothing is queued (exit 65):")
    trainctl(base, "enqueue", str(data / "broken.jsonl"), check=False)

    print("\n# dropping a file into the inbox: copy to inbox/.name, then mv (an atomic rename)")
    layout = open_base(base)
    shutil.copy(files[0], layout.inbox / ".dropped.jsonl")
    os.rename(layout.inbox / ".dropped.jsonl", layout.inbox / "dropped.jsonl")
    config = load_config(layout.config_file)
    scanner = InboxScanner(layout.inbox, config.spool.inbox_settle_seconds)
    for name in scanner.ready(time.time(), time.monotonic(), renamed=frozenset({"dropped.jsonl"})):
        taken = ingest(layout, name, config.spool)
        print(f"inbox: took {name} as {taken.item_id} ({taken.state.value})")

    trainctl(base, "pause", "--reason", "demo")
    trainctl(base, "list")
    trainctl(base, "status")
    trainctl(base, "history")
    print(f"\nThe base dir is {base}: look around with ls. The daemon that trains these "
          f"items is the next piece of work; `trainer run` reports that for now.")


if __name__ == "__main__":
    main()
