"""A Prometheus text file for node_exporter's textfile collector (``[metrics] prometheus_textfile``).

No port is opened: the daemon rewrites one file atomically (write beside it, rename), at most
once per optimizer step and at most once a second (Prometheus scrapes every 15 s or so; a
change of state is written at once), and node_exporter serves it with the machine's other
figures. Display only, like the state file: a write the disk refuses is said once in the log
and never reaches the training.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.spool import queue
from trainer.spool.fsutil import write_atomic
from trainer.spool.layout import Layout
from trainer.states import DaemonState
from trainer.train.protocol import Progress

log = logging.getLogger("trainer.metrics")

WRITE_INTERVAL_S = 1.0
QUEUE_STATES = ("pending", "active", "held", "failed", "done")


@dataclass
class Figures:
    """What the file shows: the latest of everything the sink was told."""

    state: str = DaemonState.STARTING.value
    progress: Progress | None = None
    tokens_total: int = 0
    steps_total: int = 0  # optimizer steps taken by this process (the counter's reset is its restart)
    last_step_at: float | None = None
    queue: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def exposition(figures: Figures, base_dir: str) -> str:
    """The file's text: each metric with its HELP and TYPE, every series labelled with the base
    dir (several daemons on one machine, trainer@N, export the same names)."""
    base = f'base_dir="{_label(base_dir)}"'
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{{{base}{labels}}} {_number(value)}")

    metric("trainer_daemon_state", "gauge", "1 for the state the daemon is in, 0 for the others.",
           [(f',state="{s.value}"', int(s.value == figures.state)) for s in DaemonState])
    metric("trainer_daemon_start_time_seconds", "gauge", "When the daemon process started (Unix time).",
           [("", round(figures.started_at, 3))])
    metric("trainer_queue_items", "gauge", "Items in each state of the queue.",
           [(f',state="{s}"', figures.queue.get(s, 0)) for s in QUEUE_STATES])
    metric("trainer_steps_total", "counter", "Optimizer steps taken since the daemon started.",
           [("", figures.steps_total)])
    metric("trainer_tokens_total", "counter", "Tokens trained on since the daemon started.",
           [("", figures.tokens_total)])
    p = figures.progress
    if p is not None:
        item = f',item="{_label(p.item_id)}"'
        metric("trainer_global_step", "gauge", "The model's optimizer step over its whole life.",
               [("", p.global_step)])
        metric("trainer_item_step", "gauge", "The current item's optimizer step.", [(item, p.step)])
        metric("trainer_item_steps", "gauge", "The current item's number of optimizer steps.", [(item, p.total)])
        if p.loss is not None:
            metric("trainer_loss", "gauge", "The last optimizer step's training loss.", [(item, p.loss)])
        if p.smoothed_loss is not None:
            metric("trainer_loss_smoothed", "gauge", "The training loss averaged over recent steps.",
                   [(item, p.smoothed_loss)])
        metric("trainer_learning_rate", "gauge", "The learning rate of the last step.", [(item, p.lr)])
        if p.grad_norm is not None:
            metric("trainer_grad_norm", "gauge", "The gradient norm of the last step (before clipping).",
                   [(item, p.grad_norm)])
        metric("trainer_tokens_per_second", "gauge", "Training throughput over the last step.",
               [(item, p.tokens_per_s)])
        metric("trainer_step_duration_seconds", "gauge", "How long the last optimizer step took.",
               [(item, p.seconds_per_step)])
        metric("trainer_resident_memory_bytes", "gauge", "The daemon's resident memory after the last step.",
               [("", p.host_rss_bytes)])
        metric("trainer_gpu_memory_peak_bytes", "gauge", "Peak GPU memory allocated during the last step.",
               [("", p.gpu_bytes)])
    if figures.last_step_at is not None:
        metric("trainer_last_step_timestamp_seconds", "gauge", "When the last optimizer step ended (Unix time).",
               [("", round(figures.last_step_at, 3))])
    return "\n".join(out) + "\n"


class PrometheusTextfile:
    """A MetricsSink that keeps ``path`` up to date."""

    def __init__(self, layout: Layout, path: Path, *, interval_s: float = WRITE_INTERVAL_S) -> None:
        self.layout = layout
        self.path = path
        self.interval_s = interval_s
        self.figures = Figures()
        self._written_at = float("-inf")
        self._failing = False

    def step(self, progress: Progress) -> None:
        f = self.figures
        f.progress, f.last_step_at = progress, time.time()
        f.steps_total += 1
        f.tokens_total += progress.tokens
        if time.monotonic() - self._written_at >= self.interval_s or progress.step == progress.total:
            self._write()

    def state(self, state: DaemonState, reason: str | None) -> None:
        changed = state.value != self.figures.state
        self.figures.state = state.value
        if changed or time.monotonic() - self._written_at >= self.interval_s:
            self._write()

    def _write(self) -> None:
        self._written_at = time.monotonic()
        try:
            self.figures.queue = queue.counts(self.layout)
            text = exposition(self.figures, str(self.layout.root))
            # Beside the file (node_exporter reads only *.prom, so the temporary name is never
            # read), readable by node_exporter's user; no fsync: it is rewritten all the time.
            write_atomic(self.path.parent, self.path, text.encode(), mode=0o644, durable=False)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("cannot write the Prometheus file %s (%s): its figures are stale until it can be "
                            "written again", self.path, exc.strerror or exc)
            return
        if self._failing:
            self._failing = False
            log.info("the Prometheus file %s is written again", self.path)


def textfile_path(setting: str, layout: Layout) -> Path:
    """``{name}`` becomes the base dir's name (trainer@N instances share one config)."""
    return Path(os.path.expanduser(setting.replace("{name}", layout.root.name)))
