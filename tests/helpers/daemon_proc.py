"""A real `trainer run` process for tests: started, watched through its state file, killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from helpers.common import REPO
from trainer.config import load_config
from trainer.demo.sample_data import write_sample_chat
from trainer.intake import enqueue
from trainer.spool import metrics

# Small and quick on a CPU: short rows and batches, a checkpoint every two steps, a fast
# heartbeat and inbox, quick retries, and nothing at idle (no consolidation, the snapshot
# time far from now) that a test does not ask for.
SMALL = {
    "train": {"max_length": 128, "micro_batch_size": 2, "learning_rate": 0.001, "warmup_steps": 2},
    "checkpoint": {"every_steps": 2},
    "daemon": {"heartbeat_seconds": 0.2, "min_free_bytes": 1 << 20, "retry_delay_seconds": 0.2,
               "consolidate_when_idle": False},
    "snapshot": {"at": "23:59"},
    "spool": {"inbox_settle_seconds": 0.5, "max_attempts": 3},
}


def enqueue_sample(layout, directory: Path, records: int = 200, seed: int = 1, name: str = "data") -> str:
    """Queue a generated chat file of ``records`` records (written in ``directory``); its id."""
    path = write_sample_chat(directory / f"{name}.jsonl", records, seed=seed)
    return enqueue.enqueue(layout, path, limits=load_config(layout.config_file).spool).id


def metric_steps(layout, item_id: str) -> list[int]:
    """The steps in an item's metrics file, in the order they were trained (a torn line is
    skipped: ``torn_metric_lines`` counts them)."""
    return [record["step"] for record in metrics.read(layout, item_id).steps]


def torn_metric_lines(layout, item_id: str) -> int:
    return metrics.read(layout, item_id).unreadable_lines


def small_config(**overrides: dict) -> str:
    """SMALL as TOML, with ``overrides`` merged per table: small_config(daemon={"x": 1})."""
    lines = []
    for table in [*SMALL, *(t for t in overrides if t not in SMALL)]:
        lines.append(f"[{table}]")
        for key, value in {**SMALL.get(table, {}), **overrides.get(table, {})}.items():
            lines.append(f"{key} = {orjson.dumps(value).decode()}")
    return "\n".join(lines) + "\n"


class DaemonProcess:
    """One real daemon on a base dir; its output goes to daemon.log beside the base dir."""

    def __init__(self, layout, *args: str, env: dict | None = None,
                 program: tuple[str, ...] = (sys.executable, "-m", "trainer.daemon")) -> None:
        """``env``: added to this environment; ``program``: what takes ``trainer run``'s arguments."""
        self.layout = layout
        self.log = open(layout.root.parent / "daemon.log", "ab")
        self.proc = subprocess.Popen([*program, "run", "--base-dir", str(layout.root), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, **(env or {})} if env else None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def state(self) -> dict:
        try:
            return orjson.loads(self.layout.daemon_state.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}

    def wait_for(self, predicate, timeout=60, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode} waiting for {what}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")

    def wait_ready(self):
        self.wait_for(lambda: self.state().get("pid") == self.pid and self.state().get("state") != "starting",
                      what="ready")

    def step(self) -> int:
        """The step this daemon reports (0 while the state file is still a predecessor's)."""
        state = self.state()
        if state.get("pid") != self.pid:
            return 0
        return (state.get("item") or {}).get("step") or 0

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.layout.root.parent / "daemon.log").read_text(errors="replace")[-4000:]

    def finish(self, timeout=120) -> int:
        code = self.proc.wait(timeout)
        self.log.close()
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()
