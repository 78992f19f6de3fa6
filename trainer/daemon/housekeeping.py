"""What the daemon does besides training: waiting for disk space, the daily snapshot, consolidation,
and the event log's retention.

Space is checked before an item is claimed (blocked: nothing is claimed) and before every
checkpoint save (the engine's ``space_guard``: training waits, still heartbeating). Both go
through ``_wait_for_room``. The daemon's own record (``run/housekeeping.json``) remembers the
last snapshot's day and how many items the last consolidation covered, across restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime

import orjson

from trainer.config import Config
from trainer.daemon.notify import Notifier
from trainer.daemon.policy import snapshot_due, space_needed
from trainer.errors import NotEnoughSpace, Shutdown
from trainer.spool import events
from trainer.spool.fsutil import free_bytes, write_atomic
from trainer.spool.layout import Layout
from trainer.states import DaemonState
from trainer.train.protocol import TrainingEngine

log = logging.getLogger("trainer.daemon")


class Housekeeping:
    def __init__(self, layout: Layout, config: Config, engine: TrainingEngine, notifier: Notifier, *,
                 publish: Callable[..., None], wait: Callable[[float], None],
                 stopping: Callable[[], bool]) -> None:
        self.layout = layout
        self.config = config  # replaced by the daemon on reload
        self.engine = engine
        self.notifier = notifier
        self._publish = publish
        self._wait = wait
        self._stopping = stopping
        self._events_expired_on: date | None = None

    # --- disk space ---------------------------------------------------------------------------

    def room_to_claim(self) -> bool:
        """Room for the next checkpoint before an item is claimed; if not, blocked for one interval."""
        return self._wait_for_room(self.engine.checkpoint_estimate(), waiting="", once=True)

    def space_guard(self, estimate: int) -> None:
        """Before every checkpoint: wait (blocked, still heartbeating) until the disk has room.

        Also asks systemd for time: a save during a stop must not be killed by TimeoutStopSec.
        EXTEND_TIMEOUT_USEC pushes back the watchdog as well, so the extension is sized to the
        save (~50 MB/s worst case, x3, at least 10 s) and not more: a generous floor would be
        added to the time a hang after a save goes unnoticed.
        """
        self.notifier.extend_timeout(max(10.0, estimate / 50e6 * 3))
        self._wait_for_room(estimate, waiting=" (checkpoint waiting)", once=False)

    def _wait_for_room(self, estimate: int, *, waiting: str, once: bool) -> bool:
        daemon = self.config.daemon
        need = space_needed(estimate, daemon.free_space_margin, daemon.min_free_bytes)
        while True:
            have = self.free_bytes()
            if have >= need:
                return True
            self.engine.make_room()
            have = self.free_bytes()
            if have >= need:
                return True
            reason = f"disk: need {need:,} bytes free, have {have:,}{waiting}"
            log.warning("blocked: %s", reason)
            self._publish(DaemonState.BLOCKED, reason=reason)
            if not once and self._stopping():
                raise Shutdown
            self._wait(daemon.disk_check_seconds)
            if once:
                return False

    def free_bytes(self) -> int:
        return free_bytes(self.layout.root)

    # --- snapshot and consolidation -----------------------------------------------------------

    def snapshot_if_due(self, local_now: datetime) -> None:
        day = snapshot_due(self._record().get("last_snapshot"), local_now, self.config.snapshot.at)
        if day is None or self.engine.state.global_step == 0:
            return
        try:
            self.engine.snapshot(self.layout.root / "snapshots", day, keep_days=self.config.snapshot.keep_days)
        except NotEnoughSpace as exc:
            log.warning("snapshot postponed: %s", exc.strerror)
            return
        self._save(last_snapshot=day)

    def consolidation_due(self, asked: bool) -> bool:
        """Asked for, or automatic: items were completed since the last version."""
        if self.engine.state.global_step == 0:
            return False
        done = self.engine.state.items_completed
        return asked or (self.config.daemon.consolidate_when_idle and done > self._record().get("consolidated_items", 0))

    def consolidate(self) -> str | None:
        """A new version from the weights in memory; None if postponed for lack of space."""
        done = self.engine.state.items_completed
        try:
            version = self.engine.consolidate(self.layout.root / "models",
                                              keep_versions=self.config.consolidate.keep_versions)
        except NotEnoughSpace as exc:
            log.warning("consolidation postponed: %s", exc.strerror)
            return None
        self._save(consolidated_items=done, last_version=version.name)
        log.info("consolidated into %s", version.name)
        return version.name

    # --- the event log's retention ------------------------------------------------------------

    def expire_events_if_due(self, utc_now: datetime) -> None:
        """Once a (UTC) day, and at start: remove the monthly segments past ``events.keep_months``.
        Not persisted: removing what is already gone does nothing."""
        keep = self.config.events.keep_months
        if keep == 0 or self._events_expired_on == utc_now.date():
            return
        for month in events.expired_months(events.months(self.layout), events.month_of(utc_now), keep):
            events.remove_month(self.layout, month)
            log.info("event log: removed the segments of %s (events.keep_months = %d)", month, keep)
        self._events_expired_on = utc_now.date()

    def _record(self) -> dict:
        try:
            data = orjson.loads(self.layout.housekeeping.read_bytes())
            return data if isinstance(data, dict) else {}
        except (OSError, orjson.JSONDecodeError):
            return {}

    def _save(self, **changes) -> None:
        write_atomic(self.layout.tmp, self.layout.housekeeping, orjson.dumps({**self._record(), **changes}))
