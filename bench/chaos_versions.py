"""Versions and rollback under kill -9: lineage stays exact, a rollback never leaves a mix.

    .venv/bin/python bench/chaos_versions.py [--rounds 12] [--kills 10] [--seed 1] [--keep DIR]

One base dir on the tiny demo model (CPU, consolidation when idle). A seeded driver does
``--rounds`` actions, each either queueing a batch of small items or asking for a rollback
to a version of the current line (with or without --requeue), and waits for the daemon to
settle (queue idle, no request left, a version made). Meanwhile it kills the daemon with
SIGKILL ``--kills`` times, each at a random instant after an action or as soon as a
publication or a checkpoint is being written (a ``.staging-`` dir in models/ or checkpoints/)
or, after a rollback, its flip (a checkpoint) or its copies being queued (``tmp/requeue-*``),
and starts it again. It checks, failing with exit 1 if any is wrong:

- after every kill, no mix: every committed checkpoint of a rolled-back line that has not
  trained yet holds exactly the version's weights at the version's step;
- at the end, lineage: each version's items are exactly the items whose "done" event (in log
  order) came on its line with a global step after its parent's and up to its own;
- each rollback queued again exactly the items the abandoned line trained after the version
  (the versions on its path that the version's ancestry lacks, then the items done on it
  since its last version), each copy once, and every copy was trained;
- no staging debris is left.

The quick version is tests/system/test_chaos_versions.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

CONFIG = """
[train]
max_length = 128
micro_batch_size = 2
learning_rate = 0.001
warmup_steps = 2
deterministic = true
[checkpoint]
every_steps = 2
keep_last = 3
[daemon]
heartbeat_seconds = 0.2
min_free_bytes = 1048576
retry_delay_seconds = 0.2
consolidate_when_idle = true
[consolidate]
keep_versions = 0
[snapshot]
at = "23:59"
[spool]
max_attempts = 1000
"""
SETTLE_TIMEOUT_S = 300.0


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Driver:
    def __init__(self, work: Path, model: Path, rng: random.Random) -> None:
        import shutil

        from trainer.config import default_config_toml
        from trainer.spool.layout import init_base

        self.layout, _ = init_base(work / "base", default_config_toml())
        self.layout.config_file.write_text(CONFIG)
        shutil.copytree(model, self.layout.root / "models" / "base")
        self.work, self.rng = work, rng
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills: list[str] = []
        self.problems: list[str] = []
        self.items = 0
        self.rollbacks = 0

    # --- the daemon --------------------------------------------------------------------------

    def start(self) -> None:
        log = open(self.work / f"daemon-{self.starts:03d}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "trainer.daemon", "run", "--base-dir",
                                      str(self.layout.root)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        self.starts += 1

    def kill(self, why: str) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.kills.append(why)
        self.check_no_mix()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def _state(self) -> dict:
        import orjson

        try:
            return orjson.loads((self.layout.run / "daemon.json").read_bytes())
        except (OSError, ValueError):
            return {}

    def settled(self) -> bool:
        from trainer.spool import queue

        state = self._state()
        return (state.get("pid") == self.proc.pid and state.get("state") == "idle" and queue.is_idle(self.layout)
                and not any(n in os.listdir(self.layout.control) for n in ("rollback.json", "consolidate.json"))
                and not self._staging("models") and not self._staging("tmp"))

    def _staging(self, sub: str) -> bool:
        try:
            return any(n.startswith((".staging-", "requeue-")) for n in os.listdir(self.layout.root / sub))
        except FileNotFoundError:
            return False

    # --- one round ---------------------------------------------------------------------------

    def act(self) -> str:
        from trainer.config import load_config
        from trainer.demo.sample_data import write_sample_chat
        from trainer.intake.enqueue import enqueue_batch
        from trainer.spool import control

        line = self._line_versions()
        if line and self.rng.random() < 0.5:
            target = self.rng.choice(line)
            requeue = self.rng.random() < 0.6 or not self.rollbacks  # the first one always requeues
            self.rollbacks += 1
            control.send_rollback(self.layout, target, requeue=requeue)
            return f"rollback {target}{' --requeue' if requeue else ''}"
        paths = []
        for _ in range(self.rng.randint(1, 2)):
            self.items += 1
            paths.append(write_sample_chat(self.work / f"item{self.items:03d}.jsonl", 8, seed=self.items))
        enqueue_batch(self.layout, paths, limits=load_config(self.layout.config_file).spool)
        return f"enqueue {len(paths)}"

    def _line_versions(self) -> list[str]:
        """The versions of the line training continues on: the newest version and its ancestors."""
        from trainer.spool import versions

        models = versions.models_dir(self.layout)
        newest = self._current_version()
        return versions.ancestry(models, newest) if newest else []

    def _current_version(self) -> str | None:
        import orjson

        from trainer.train.checkpoint import CheckpointStore

        committed = CheckpointStore(self.layout.root / "checkpoints").committed()
        if not committed:
            return None
        state = orjson.loads((committed[-1].path / "train_state.json").read_bytes())
        return state.get("version")

    def round(self, kill: bool) -> str:
        action = self.act()
        if kill:
            # A rollback's moments: its checkpoint (the flip) and its copies staged in tmp/.
            aim = self.rng.choice(["instant", "checkpoints", "tmp"] if action.startswith("rollback")
                                  else ["instant", "models", "checkpoints"])
            deadline = time.monotonic() + (self.rng.uniform(0, 3.0) if aim == "instant" else 60)
            while time.monotonic() < deadline and (aim == "instant" or not self._staging(aim)):
                if self.proc.poll() is not None or (aim != "instant" and self.settled()):
                    break
                time.sleep(0.002)
            self.kill(f"{action}: {aim}")
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not self.settled():
            if self.proc.poll() is not None:
                self.problems.append(f"the daemon exited {self.proc.returncode} (see daemon-{self.starts - 1:03d}.log)")
                self.start()
            if time.monotonic() > deadline:
                raise SystemExit(f"not settled after {action}: see {self.work}")
            time.sleep(0.05)
        return action

    # --- the checks --------------------------------------------------------------------------

    def check_no_mix(self) -> None:
        """Every committed checkpoint of a rolled-back line still at the version's step holds
        exactly the version's weights (full fine-tuning: the same bytes)."""
        import orjson

        from trainer.train.checkpoint import CheckpointStore

        models = self.layout.root / "models"
        for checkpoint in CheckpointStore(self.layout.root / "checkpoints").committed():
            state = orjson.loads((checkpoint.path / "train_state.json").read_bytes())
            rollback = state.get("rollback")
            if not rollback or checkpoint.line != state.get("line"):
                continue
            version = rollback["version"]
            if state.get("base") != f"models/{version}":
                self.problems.append(f"{checkpoint.path.name}: line {checkpoint.line} trains on {state.get('base')}, "
                                     f"not the version rolled back to ({version})")
            if checkpoint.step == state.get("version_step") and not state.get("lineage") and not state.get("cursor"):
                if _sha(checkpoint.path / "trainable.safetensors") != _sha(models / version / "model.safetensors"):
                    self.problems.append(f"{checkpoint.path.name}: line {checkpoint.line} at {version}'s step does "
                                         f"not hold {version}'s weights")

    def check_end(self) -> dict:
        from trainer.spool import events, queue, versions
        from trainer.states import ItemState

        models = versions.models_dir(self.layout)
        log = events.read(self.layout).events
        done = [e for e in log if e["event"] == "done"]
        names = versions.names(models)

        def step(name: str | None) -> int:
            return 0 if name in (None, "base") else int(versions.read(models, name)["global_step"])

        for name in names:
            meta = versions.read(models, name)
            line = meta["lineage"]["line"]
            expected = [e["id"] for e in done if e.get("line", 0) == line
                        and step(meta["parent"]) < e["global_step"] <= meta["global_step"]]
            got = [i["id"] for i in meta["lineage"]["items"]]
            if got != expected:
                self.problems.append(f"{name}: lineage {got} but the items done on line {line} between "
                                     f"{meta['parent']} and it were {expected}")
        trained = {i.id for i in queue.list_items(self.layout, [ItemState.DONE])}
        rollbacks = [e for e in log if e["event"] == "rolled_back"]
        for event in rollbacks:
            shared = set(versions.ancestry(models, event["version"]))
            path = [n for n in reversed(versions.ancestry(models, event["from_version"])) if n not in shared]
            expected = [i["id"] for n in path for i in versions.lineage_items(versions.read(models, n))]
            expected += [e["id"] for e in done if e.get("line", 0) == event["from_line"]
                         and e["global_step"] > step(event["from_version"])]
            if event["requeued_from"] != (expected if event["requeue"] else []):
                self.problems.append(f"rollback to {event['version']} (requeue {event['requeue']}): queued again "
                                     f"{event['requeued_from']}, the items after it were {expected}")
            missing = [c for c in event["requeued"] if c not in trained]
            if missing:
                self.problems.append(f"rollback to {event['version']}: copies never trained: {missing}")
        copies = [e["id"] for e in log if e["event"] == "enqueued" and e.get("requeued_from")]
        debris = [f"{sub}/{n}" for sub in ("models", "checkpoints", "tmp") for n in os.listdir(self.layout.root / sub)
                  if n.startswith((".staging-", ".deleting-")) or sub == "tmp"]
        if debris:
            self.problems.append(f"debris left: {debris}")
        return {"versions": names, "rollbacks": len(rollbacks), "requeued_copies": len(set(copies)),
                "done_events": len(done),
                "lines": max([0, *(versions.read(models, n)["lineage"]["line"] for n in names)])}


def experiment(work: Path, model: Path, *, rounds: int, kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    driver = Driver(work, model, rng)
    driver.start()
    kill_rounds = set(rng.sample(range(rounds), min(kills, rounds)))
    actions = []
    started = time.monotonic()
    try:
        for n in range(rounds):
            actions.append(driver.round(n in kill_rounds))
    finally:
        driver.stop()
    result = driver.check_end()
    return {"ok": not driver.problems, "problems": driver.problems, "actions": actions, "kills": driver.kills,
            "starts": driver.starts, "seconds": round(time.monotonic() - started, 1), **result}


def main() -> None:
    from chaos_common import run_on_demo_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    run_on_demo_model("chaos-versions-", args.keep, lambda work, model: experiment(
        work, model, rounds=args.rounds, kills=args.kills, seed=args.seed))


if __name__ == "__main__":
    main()
