"""What the chaos suites share: a small base dir on the tiny demo model, and a peak-RSS watch."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psutil

from trainer.config import default_config_toml
from trainer.layout import Layout, init_base

# Small and quick on a CPU: every file is a step or two, the heartbeat and the inbox settle
# fast, and nothing happens at idle that the tests do not ask for.
SMALL_CONFIG = """
[train]
max_length = 128
micro_batch_size = 2
learning_rate = 0.001
warmup_steps = 2
[checkpoint]
every_steps = 50
[daemon]
heartbeat_seconds = 0.2
min_free_bytes = 1048576
retry_delay_seconds = 0.2
consolidate_when_idle = false
[snapshot]
at = "23:59"
[spool]
inbox_settle_seconds = 0.5
max_attempts = 3
"""


def small_base(root: Path, demo_model: Path, spool: str = "") -> Layout:
    """An initialised base dir at ``root`` with the demo model and SMALL_CONFIG (``spool``:
    extra lines for its [spool] table)."""
    layout, _ = init_base(root, default_config_toml())
    layout.config_file.write_text(SMALL_CONFIG + spool)
    shutil.copytree(demo_model, layout.root / "models" / "base")
    return layout


class PeakRss:
    """Samples a process's resident memory from a thread until stopped; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.peak = 0
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return  # it exited
            self._stop.wait(interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak
