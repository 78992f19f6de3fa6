"""What everyone sees of the daemon: the state file, systemd's STATUS, the watchdog, metrics.

The state file (``run/daemon.json``) is for display only: ``trainctl status`` reads it, the
daemon never does, and a write of it that fails decides nothing (it is logged once). The
watchdog is fed only from ``publish``, i.e. only while the loop makes progress: a hung step
or a hung save stops the pings, and systemd restarts the daemon.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

from trainer.daemon.notify import Notifier
from trainer.spool import control
from trainer.spool.layout import Layout
from trainer.states import DaemonState
from trainer.timefmt import utc_now
from trainer.train.protocol import CheckpointRef, Progress

log = logging.getLogger("trainer.daemon")

STATE_WRITE_INTERVAL_S = 1.0  # the state file is rewritten at most this often while training


class MetricsSink(Protocol):
    """Where an exporter plugs in: told every optimizer step and every state change."""

    def step(self, progress: Progress) -> None: ...

    def state(self, state: DaemonState, reason: str | None) -> None: ...


class NoMetrics:
    def step(self, progress: Progress) -> None:
        pass

    def state(self, state: DaemonState, reason: str | None) -> None:
        pass


@dataclass
class Activity:
    """What the daemon is doing, as far as the state file shows it."""

    item_id: str | None = None
    item_name: str | None = None
    progress: Progress | None = None
    last_error: str | None = None
    model_load_s: float | None = None  # imports + weights
    rss_after_items: list[int] = field(default_factory=list)
    gpu: dict | None = None
    last_eval: dict | None = None  # the last item's held-out evaluation
    world: dict | None = None  # the ranks (Engine.world_view), when training runs on several

    def start_item(self, item_id: str, name: str | None) -> None:
        self.item_id, self.item_name, self.progress = item_id, name, None

    def end_item(self) -> None:
        self.item_id, self.item_name, self.progress = None, None, None


class Reporter:
    def __init__(self, layout: Layout, notifier: Notifier, *, memory_growth_limit: int,
                 metrics: MetricsSink | None = None) -> None:
        self.layout = layout
        self.notifier = notifier
        self.metrics = metrics or NoMetrics()
        self.memory_growth_limit = memory_growth_limit
        # In the state file, so that trainctl status judges the heartbeat by the running daemon's
        # threshold without loading the config (the daemon updates it on a reload).
        self.stale_after_s: float | None = None
        self.started_at = utc_now()
        # The daemon's pid as trainctl knows it (the lock's): under the launcher, the launcher's.
        self.pid = os.getpid()
        self._written_at = float("-inf")
        self._published: DaemonState | None = None
        self._state_unwritable = False  # said once in the journal, not at every heartbeat

    def step(self, progress: Progress) -> None:
        self.metrics.step(progress)

    def publish(self, state: DaemonState, activity: Activity, checkpoint: CheckpointRef | None, *,
                reason: str | None = None, force: bool = True) -> None:
        now = time.monotonic()
        # A change of state is shown at once (blocked -> training when the disk has room again).
        if not force and state is self._published and now - self._written_at < STATE_WRITE_INTERVAL_S:
            return
        self._written_at, self._published = now, state
        item = _item_view(activity)
        record = control.daemon_state(
            state.value, pid=self.pid, started_at=self.started_at, now=utc_now(), item=item,
            last_checkpoint={"step": checkpoint.step, "name": checkpoint.path.name} if checkpoint else None,
            last_error=activity.last_error, reason=reason, model_load_s=activity.model_load_s,
            stale_after_s=self.stale_after_s,
            memory={"rss_after_items": activity.rss_after_items[-5:], "gpu": activity.gpu,
                    "growth_limit": self.memory_growth_limit},
            last_eval=activity.last_eval, **({"world": activity.world} if activity.world else {}))
        self._write_state(record)
        self.metrics.state(state, reason)
        self.notifier.status(_summary(state, reason, item))
        self.notifier.watchdog()

    def _write_state(self, record: dict) -> None:
        """Display only: a state file the disk refuses (read-only, or full where even a rewrite
        in place is impossible) is said once in the journal, and again once it works again."""
        try:
            control.write_state(self.layout, record)
        except OSError as exc:
            if not self._state_unwritable:
                self._state_unwritable = True
                log.warning("cannot write the state file %s (%s): trainctl status shows the last one written "
                            "until it can be written again", self.layout.daemon_state, exc.strerror or exc)
            return
        if self._state_unwritable:
            self._state_unwritable = False
            log.info("the state file %s is written again", self.layout.daemon_state)


def _item_view(activity: Activity) -> dict | None:
    if activity.item_id is None:
        return None
    item = {"id": activity.item_id, "name": activity.item_name}
    p = activity.progress
    if p is not None:
        item.update(step=p.step, total=p.total, loss=p.smoothed_loss, lr=p.lr, grad_norm=p.grad_norm,
                    tokens_per_s=round(p.tokens_per_s, 1), seconds_per_step=p.seconds_per_step,
                    global_step=p.global_step)
    return item


def _summary(state: DaemonState, reason: str | None, item: dict | None) -> str:
    """systemd's one-line STATUS."""
    summary = state.value + (f": {reason}" if reason else "")
    if item and "step" in item:
        loss = f" loss {item['loss']:.4f}" if isinstance(item.get("loss"), float) else ""
        summary += f" {item['name']} step {item['step']}/{item['total']}{loss}"
    return summary
