"""`make demo`: the product end to end on a fresh base dir, on the embedded tiny model.

Builds the demo model and sample data offline (`trainctl init --demo`), queues files with
trainctl (an invalid one is refused with its line numbers), drops one into the inbox the
safe way (copy to .name, then mv), trains every item for real, verifies and publishes a
snapshot and a consolidated version, then shows status, list and history.

Until the daemon lands, the training here is driven by a short loop over the real spool and
the real engine (claim, survey, train, done), without the daemon's signals and recovery.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from trainer.sample_data import write_sample_chat


def trainctl(base: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "ctl", "--base-dir", str(base), *args]
    print(f"\n$ trainctl {' '.join(args)}", flush=True)
    result = subprocess.run(argv, text=True)
    if check and result.returncode not in (0, 3):
        raise SystemExit(f"demo: trainctl {' '.join(args)} exited {result.returncode}")
    return result


def train_queue(base: Path) -> None:
    """Claim each queued item and train it with the engine (the daemon's job, minus its
    robustness)."""
    from trainer import spool
    from trainer.config import load_config
    from trainer.layout import open_base
    from trainer.timefmt import utc_now
    from trainer.train import publish
    from trainer.train.engine import Engine, ItemFailed

    layout = open_base(base)
    config = load_config(layout.config_file)
    engine = Engine(base, config)
    engine.start()
    while (item := spool.claim_next(layout, utc_now())) is not None:
        try:
            plan = engine.prepare(item.id, item.meta.sha256, item.data_path)
        except ItemFailed as failed:
            spool.fail(layout, item.id, failed.reason)
            print(f"{item.meta.name}: failed: {failed.reason}")
            continue
        spool.set_tokens(layout, item.id, plan.stats)
        started = time.monotonic()

        def report(progress) -> bool:
            if progress.step % 5 == 0 or progress.step == progress.total:
                print(f"  {item.meta.name}: step {progress.step}/{progress.total}  loss {progress.loss:.3f}  "
                      f"{progress.tokens_per_s:,.0f} tok/s", flush=True)
            return True

        print(f"training {item.meta.name} ({plan.stats['examples']} examples, {plan.total_steps} steps)")
        engine.train(plan, report)
        spool.complete(layout, item.id, steps=plan.total_steps, seconds=round(time.monotonic() - started, 1))
    snapshot = publish.snapshot(engine, base / "snapshots", date.today().isoformat(),
                                keep_days=config.snapshot.keep_days)
    version = publish.consolidate(engine, base / "models", keep_versions=config.consolidate.keep_versions)
    print(f"\nsnapshot: {snapshot}\nconsolidated version: {version} (loads with "
          f"AutoModelForCausalLM.from_pretrained)")


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
    from trainer.config import load_config
    from trainer.inbox import InboxScanner, ingest
    from trainer.layout import open_base

    layout = open_base(base)
    shutil.copy(files[0], layout.inbox / ".dropped.jsonl")
    os.rename(layout.inbox / ".dropped.jsonl", layout.inbox / "dropped.jsonl")
    config = load_config(layout.config_file)
    scanner = InboxScanner(layout.inbox, config.spool.inbox_settle_seconds)
    for name in scanner.ready(time.time(), time.monotonic(), renamed=frozenset({"dropped.jsonl"})):
        taken = ingest(layout, name, config.spool)
        print(f"inbox: took {name} as {taken.item_id} ({taken.state.value})")

    trainctl(base, "list")
    print("\n# training every item on the tiny model (CPU)")
    train_queue(base)
    trainctl(base, "list", "--done")
    trainctl(base, "status")
    trainctl(base, "history", "-n", "8")
    print(f"\nThe base dir is {base}: look around with ls (checkpoints/, snapshots/, models/, metrics/).")


if __name__ == "__main__":
    main()
