"""`make demo`: the product end to end on a fresh base dir, on the embedded tiny model.

Builds the demo model and sample data offline (`trainctl init --demo`), queues files with
trainctl (an invalid one is refused with its line numbers), drops one into the inbox the
safe way (copy to .name, then mv), runs the daemon until the queue is empty (it takes the
inbox file, trains every item for real, snapshots and consolidates), then shows status,
list and history, writes the report page (base/report.html) and ends on the loss curve.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from trainer.demo.sample_data import write_sample_chat


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
    files = [write_sample_chat(data / f"chat-{n}.jsonl", 300, seed=n) for n in range(3)]
    (data / "broken.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')

    trainctl(base, "init", "--demo")
    trainctl(base, "enqueue", str(files[0]), str(files[1]))
    trainctl(base, "enqueue", "--priority", "high", str(files[2]))
    print("\n# an invalid file is refused with its line numbers, and nothing is queued (exit 65):")
    trainctl(base, "enqueue", str(data / "broken.jsonl"), check=False)

    print("\n# dropping a file into the inbox: copy to inbox/.name, then mv (an atomic rename)")
    shutil.copy(files[0], base / "inbox" / ".dropped.jsonl")
    os.rename(base / "inbox" / ".dropped.jsonl", base / "inbox" / "dropped.jsonl")

    trainctl(base, "list")
    print("\n# the daemon trains every item on the tiny model (CPU), snapshots and consolidates, "
          "then exits because of --exit-when-idle\n$ trainer run --exit-when-idle", flush=True)
    result = subprocess.run([sys.executable, "-m", "trainer.daemon", "run", "--base-dir", str(base),
                             "--exit-when-idle"])
    if result.returncode != 0:
        raise SystemExit(f"demo: the daemon exited {result.returncode}")
    trainctl(base, "list", "--done")
    trainctl(base, "status")
    trainctl(base, "history", "-n", "8")
    print("\n# the trainer's state as one self-contained HTML page (open it in any browser)")
    trainctl(base, "report")
    print(f"\nThe base dir is {base}: look around with ls (checkpoints/, snapshots/, models/, metrics/), "
          f"or open {base / 'report.html'}.")
    show_loss_curve(base)


def show_loss_curve(base: Path) -> None:
    """The demo ends on what the training did: every item's loss over the model's steps."""
    print("\n# the loss over every item trained (trainctl plot ITEM for one, --png FILE for an image)")
    trainctl(base, "plot", "--all", "--height", "10")


if __name__ == "__main__":
    main()
