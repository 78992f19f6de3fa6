"""What the daemon does besides training: waiting for disk space, the daily snapshot, consolidation,
and the event log's retention.

Space is checked before an item is claimed (blocked: nothing is claimed) and before every
checkpoint save (the engine's ``space_guard``: training waits, still heartbeating). Both go
through ``_wait_for_room``; every wait is the daemon's ``block`` (state blocked with the
reason, heartbeat and watchdog every ``heartbeat_seconds``, a stop honoured at once). The
daemon's own record (``run/housekeeping.json``) remembers the last snapshot's day and how
many items the last consolidation covered, across restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime

import orjson

from trainer.config import Config
from trainer.daemon.notify import Notifier
from trainer.daemon.policy import snapshot_due, space_needed
from trainer.errors import NotEnoughSpace
from trainer.eventkinds import Event
from trainer.spool import candidates, events, versions
from trainer.spool.fsutil import free_bytes, write_atomic
from trainer.spool.layout import Layout
from trainer.train.protocol import TrainingEngine

log = logging.getLogger("trainer.daemon")


class Housekeeping:
    def __init__(self, layout: Layout, config: Config, engine: TrainingEngine, notifier: Notifier, *,
                 block: Callable[[str, float], None],
                 until_written: Callable[[Callable[[], object]], object]) -> None:
        self.layout = layout
        self.config = config  # replaced by the daemon on reload
        self.engine = engine
        self.notifier = notifier
        self._block = block
        self._until_written = until_written
        self._short_of_room = False  # said once per shortage, not at every look
        self._postponements: dict[str, str] = {}  # what waits for room, logged once
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
            if have < need:
                self.engine.make_room()
                have = self.free_bytes()
            if have >= need:
                if self._short_of_room:
                    log.info("disk: room again (%s bytes free)", f"{have:,}")
                    self._short_of_room = False
                return True
            reason = f"disk: need {need:,} bytes free, have {have:,}{waiting}"
            if not self._short_of_room:
                log.warning("blocked: %s", reason)
                self._short_of_room = True
            self._block(reason, daemon.disk_check_seconds)
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
            self._postponed("snapshot", exc)  # training goes on; tried again at the next checkpoint
            return
        self._postponements.pop("snapshot", None)
        self._save(last_snapshot=day)

    def consolidation_due(self, asked: bool) -> bool:
        """Asked for, or automatic: items were completed since the last version. Never when
        nothing was trained since the last version: two versions at one step are one too many
        (a request sent while items trained used to publish a second one after the automatic one)."""
        state = self.engine.state
        if state.global_step == 0 or state.global_step <= self._last_version_step():
            if asked and state.global_step:
                log.info("consolidation asked for, but nothing was trained since the last version")
            return False
        if self._record().get("held_back_step") == state.global_step:
            # The gate held these very weights back: the same candidate again would help nobody.
            if asked:
                held = self._record().get("held_back")
                log.info("consolidation asked for, but these weights were held back by the gate as %s "
                         "(trainctl promote %s / discard %s)", held, held, held)
            return False
        done = state.items_completed
        since_record = state.version is None and done > self._record().get("consolidated_items", 0)
        return asked or (self.config.daemon.consolidate_when_idle and (bool(state.lineage) or since_record))

    def _last_version_step(self) -> int:
        """This line's last version's step; for a checkpoint from before lineage was kept, the
        newest version's on disk."""
        state = self.engine.state
        if state.version is not None:
            return state.version_step
        models = versions.models_dir(self.layout)
        newest = versions.names(models)
        return int((versions.read(models, newest[-1]) or {}).get("global_step") or 0) if newest else 0

    def consolidate(self) -> str | None:
        """A new version from the weights in memory; None if postponed for lack of space."""
        done = self.engine.state.items_completed
        try:
            version = self.engine.consolidate(self.layout.root / "models",
                                              keep_versions=self.config.consolidate.keep_versions)
        except NotEnoughSpace as exc:
            # Nothing else to do (the queue is idle): blocked, with the reason, until the next look.
            self._postponed("consolidation", exc)
            self._block(f"{exc.strerror} (consolidation waiting)", self.config.daemon.disk_check_seconds)
            return None
        self._postponements.pop("consolidation", None)
        if version.parent.name == candidates.CANDIDATES:
            # Held back by the regression gate: the items it covers count as consolidated (the
            # next idle moment must not make another candidate of the same weights).
            self._save(consolidated_items=done, held_back=version.name,
                       held_back_step=self.engine.state.global_step)
            gate = candidates.find(version.parent.parent, version.name).gate
            self._until_written(lambda: events.append(self.layout, Event.HELD_BACK, None, version=version.name,
                                                      reason=gate.get("reason"), compared_with=gate.get("compared_with")))
            log.warning("%s held back by the regression gate: %s (trainctl promote %s / discard %s)",
                        version.name, gate.get("reason"), version.name, version.name)
            return version.name
        self._save(consolidated_items=done, last_version=version.name)
        meta = versions.read(versions.models_dir(self.layout), version.name) or {}
        events.append(self.layout, Event.CONSOLIDATED, None, version=version.name, parent=meta.get("parent"),
                      global_step=meta.get("global_step"), items=[i.get("id") for i in versions.lineage_items(meta)])
        log.info("consolidated into %s", version.name)
        return version.name

    def _postponed(self, what: str, exc: NotEnoughSpace) -> None:
        """Said once per shortage, not at every checkpoint or heartbeat that tries again."""
        if self._postponements.get(what) is None:
            log.warning("%s postponed: %s", what, exc.strerror)
        self._postponements[what] = exc.strerror

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
        """Waits for a disk that refuses it: a consolidation not recorded would be made again."""
        self._until_written(lambda: write_atomic(self.layout.tmp, self.layout.housekeeping,
                                                 orjson.dumps({**self._record(), **changes})))
