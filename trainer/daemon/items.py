"""One item, from claim to its end: check the data again, train it, then done, skipped, retried or failed.

``ItemTrainer.train`` returns an ``Outcome``; the service decides what the loop does next.
What to do after a failure (retry later or give up) is one pure policy, ``after_failure``,
used for items that failed and for items a crash interrupted. When a retry may start is the
``RetryClock``'s call, on the monotonic clock.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Protocol, TypeVar

from trainer.clock import Now
from trainer.config import Config
from trainer.daemon import logs
from trainer.daemon.policy import MAX_RETRY_DELAY_S, first_sight_deadline, retry_delay
from trainer.daemon.reporter import Activity
from trainer.errors import DiskUnwritable, InvalidData, ItemFailed, RestartRequested, Shutdown, TrainerError
from trainer.eventkinds import Event
from trainer.intake.enqueue import validate_item_data
from trainer.spool import control, queue
from trainer.spool.fsutil import disk_refusal
from trainer.spool.item import Item, display_name
from trainer.spool.layout import Layout
from trainer.states import DaemonState, ItemState
from trainer.timefmt import iso, parse_iso, utc_now
from trainer.train.protocol import ItemPlan, Progress, TrainingEngine

log = logging.getLogger("trainer.daemon")
T = TypeVar("T")


class Outcome(Enum):
    DONE = "done"
    SKIPPED = "skipped"
    RETRY = "retry"  # failed, back in the queue for a later attempt
    FAILED = "failed"
    STOPPED = "stopped"  # the daemon is stopping: the item waits at the head of its queue


@dataclass(frozen=True)
class AfterFailure:
    give_up: bool
    attempts: int  # including the one that just failed
    delay_s: float  # before the next attempt (0 when giving up or when interrupted)


def after_failure(attempts_before: int, *, transient: bool, max_attempts: int, retry_base_s: float,
                  interrupted: bool = False) -> AfterFailure:
    """Retry or give up. An interrupted item (a crash mid-item) goes back to the head of its
    queue at once; one that failed waits an exponential delay. Permanent failures never retry."""
    attempts = attempts_before + 1
    if not transient or attempts >= max_attempts:
        return AfterFailure(True, attempts, 0.0)
    return AfterFailure(False, attempts, 0.0 if interrupted else retry_delay(attempts, retry_base_s))


class Host(Protocol):
    """What an item needs of the service around it."""

    config: Config

    def publish(self, state: DaemonState, *, reason: str | None = None, force: bool = True) -> None: ...

    def wait(self, seconds: float) -> None: ...

    def stop_wanted(self, requests: control.Requests | None = None) -> bool: ...

    def after_step(self, progress: Progress) -> None: ...

    def wait_for_disk(self, refused: DiskUnwritable) -> None: ...

    def until_written(self, action: Callable[[], T]) -> T: ...


class Clock(Protocol):
    def now(self) -> Now: ...


class RetryClock:
    """When each retry delay is over, decided on the monotonic clock.

    ``not_before`` in meta.json is a wall-clock time, for people (``trainctl show``) and for a
    daemon started later. Deciding on it would let a clock jumped back a day hold a retry for
    a day, and a jump forward release it at once. So a delay set here is remembered as a
    monotonic deadline; a ``not_before`` set by an earlier run (before a restart) is read
    against the wall clock once, at first sight, never as more than the longest delay, and
    carried on the monotonic clock from then on.
    """

    def __init__(self, clock: Clock, longest_s: float = MAX_RETRY_DELAY_S) -> None:
        self.clock = clock
        self.longest_s = longest_s
        self._deadlines: dict[str, tuple[str, float]] = {}  # id -> (not_before as recorded, monotonic)

    def defer(self, item_id: str, delay_s: float) -> datetime:
        """Start ``item_id``'s delay now; returns the wall-clock ``not_before`` to record."""
        now = self.clock.now()
        not_before = now.utc + timedelta(seconds=delay_s)
        self._deadlines[item_id] = (iso(not_before), now.monotonic + delay_s)
        return not_before

    def due(self, item_id: str, not_before: str) -> bool:
        """Whether the delay recorded as ``not_before`` is over (``queue.RetryDue``)."""
        now = self.clock.now()
        known = self._deadlines.get(item_id)
        if known is None or known[0] != not_before:
            deadline = first_sight_deadline(parse_iso(not_before), now.utc, now.monotonic, self.longest_s)
            known = self._deadlines[item_id] = (not_before, deadline)
        if now.monotonic < known[1]:
            return False
        del self._deadlines[item_id]
        return True


def claim(layout: Layout, engine: TrainingEngine, retries: RetryClock) -> Item | None:
    """The item the checkpoint is in the middle of, if any, before any other."""
    cursor = engine.state.cursor
    if cursor:
        item = queue.claim_specific(layout, cursor["item_id"])
        if item is not None:
            return item
    return queue.claim_next(layout, retries.due)


class ItemTrainer:
    def __init__(self, host: Host, layout: Layout, engine: TrainingEngine, activity: Activity,
                 retries: RetryClock) -> None:
        self.host = host
        self.layout = layout
        self.engine = engine
        self.activity = activity
        self.retries = retries
        self._action = control.Action.NONE

    def train(self, item: Item) -> Outcome:
        self.activity.start_item(item.id, item.meta.name if item.meta else None)
        logs.tag_item(item.id)  # every log line until the end names the item (trainctl logs --item)
        self.host.publish(DaemonState.TRAINING)
        try:
            while True:
                try:
                    check_data(self.layout, item, self.host.config, tick=self.engine.heartbeat)
                    return self._train(item, self.engine.prepare(item.id, item.meta.sha256, item.data_path))
                except Exception as exc:
                    refused = disk_refusal(exc)
                    if refused is None:
                        raise
                # A write the disk refused: never the item's fault. Wait, then go on with the
                # same item from the engine's state in memory (its cursor is that of the last
                # step taken), so no step is lost or trained twice.
                log.warning("%s: the disk refused a write: %s", item.id, refused)
                self.host.wait_for_disk(refused)
        except ItemFailed as failed:
            return self._failed(item, failed.reason, transient=failed.transient)
        except Shutdown:
            return self._stopped(item)
        except RestartRequested:
            raise
        except Exception as exc:
            log.error("training %s failed:\n%s", item.id, traceback.format_exc())
            return self._failed(item, f"{type(exc).__name__}: {exc}", transient=True)
        finally:
            self.activity.end_item()
            logs.tag_item(None)

    def _train(self, item: Item, plan: ItemPlan) -> Outcome:
        if plan.stats:  # empty when resuming: recorded the first time
            self.host.until_written(lambda: queue.set_tokens(self.layout, item.id, plan.stats))
        resuming = not plan.stats and self.engine.state.cursor
        log.info("training %s (%s): %d steps%s", item.id, display_name(item.meta.name), plan.total_steps,
                 f", resuming at step {self.engine.state.cursor['item_step']}" if resuming else "")
        while True:
            self._action = control.Action.NONE
            if self.engine.train(plan, self._after_step):
                self._record_eval(item)
                self.host.until_written(lambda: queue.complete(self.layout, item.id, steps=plan.total_steps,
                                                               global_step=self.engine.state.global_step,
                                                               line=self.engine.state.line))
                log.info("done %s", item.id)
                return Outcome.DONE
            if self._action is control.Action.PAUSE:
                self._action = self._paused(item)
                if self._action is control.Action.NONE:
                    continue
            if self._action is control.Action.SKIP:
                return self._skipped(item)
            return self._stopped(item)

    def _record_eval(self, item: Item) -> None:
        """The held-out numbers the engine kept for this item: its metadata, the event log, the status."""
        evaluation = getattr(self.engine.state, "last_eval", None)
        if not evaluation or evaluation.get("item_id") != item.id:
            return
        numbers = {k: v for k, v in evaluation.items() if k not in ("item_id", "kind")}
        self.host.until_written(lambda: queue.record_eval(self.layout, item.id, numbers))
        self.activity.last_eval = {"item_id": item.id, **numbers}

    def _after_step(self, progress: Progress) -> bool:
        """After every optimizer step: report progress, obey requests and signals."""
        self.activity.progress = progress
        self.host.after_step(progress)
        requests = control.read_requests(self.layout)
        if self.host.stop_wanted(requests):
            self._action = control.Action.STOP
        else:
            self._action = control.decide(requests, progress.item_id)
        return self._action is control.Action.NONE

    def _paused(self, item: Item) -> control.Action:
        """Paused mid-item: the model stays loaded, the watchdog is still fed."""
        log.info("paused")
        while True:
            requests = control.read_requests(self.layout)
            if self.host.stop_wanted(requests):
                return control.Action.STOP
            if requests.skip is not None and requests.skip.get("item") == item.id:
                return control.Action.SKIP
            if requests.pause is None:
                log.info("resumed")
                return control.Action.NONE
            self.host.publish(DaemonState.PAUSED, reason=requests.pause.get("reason"))
            self.host.wait(self.host.config.daemon.heartbeat_seconds)

    def _skipped(self, item: Item) -> Outcome:
        request = control.read_requests(self.layout).skip or {}
        reason = request.get("reason") or "no reason given"
        step = self.activity.progress.step if self.activity.progress else 0
        why = f"skipped by request at step {step}: {reason}"
        self.host.until_written(lambda: queue.fail(self.layout, item.id, why, kind="skipped", event=Event.SKIPPED))
        self.host.until_written(lambda: control.clear_skip(self.layout))
        log.info("skipped %s at step %d", item.id, step)
        return Outcome.SKIPPED

    def _stopped(self, item: Item) -> Outcome:
        """The checkpoint holds the cursor; the item waits at the head of its queue.

        Putting it back needs no room on the disk (``queue.requeue`` leaves its metadata
        alone); only a read-only disk refuses it, and then the next start puts it back."""
        try:
            queue.requeue(self.layout, item.id, reason="daemon stopping", count_attempt=False)
        except Exception as exc:
            if disk_refusal(exc) is None:
                raise
            log.warning("%s stays in active/ (the disk refused the move: %s): the next start puts it back",
                        item.id, exc)
        return Outcome.STOPPED

    def _failed(self, item: Item, reason: str, *, transient: bool) -> Outcome:
        self.activity.last_error = f"{iso(utc_now())} {item.id}: {reason}"
        current = queue.find(self.layout, item.id)
        if current.state is not ItemState.ACTIVE:
            return Outcome.FAILED
        spool, daemon = self.host.config.spool, self.host.config.daemon
        decision = after_failure(current.meta.attempts if current.meta else 0, transient=transient,
                                 max_attempts=spool.max_attempts, retry_base_s=daemon.retry_delay_seconds)
        if not decision.give_up:
            when = self.retries.defer(item.id, decision.delay_s)
            self.host.until_written(lambda: queue.requeue(self.layout, item.id, reason=reason, not_before=when))
            log.warning("%s failed (%s); retrying in %.0f s (attempt %d of %d)", item.id, reason, decision.delay_s,
                        decision.attempts + 1, spool.max_attempts)
            return Outcome.RETRY
        why = reason if not transient else f"{reason} (attempt {decision.attempts} of {spool.max_attempts})"
        self.host.until_written(lambda: queue.fail(self.layout, item.id, why,
                                                   kind="transient" if transient else "permanent"))
        log.error("%s failed: %s", item.id, why)
        return Outcome.FAILED


def check_data(layout: Layout, item: Item, config: Config, tick: Callable[[], None] = lambda: None) -> None:
    """Validate again at claim: the queued copy must still be what was validated (``tick``:
    called often, a large file takes a while)."""
    if item.meta is None:
        raise ItemFailed(f"its metadata is unreadable ({item.meta_problem}): trainctl retry {item.id} rebuilds it",
                         transient=False)
    if not _readable(item.data_path):
        # Named where the file will be (failed/ID/), not where it is now: the message is
        # read after the move, and it is that path which must be made readable.
        kept = layout.state_dir(ItemState.FAILED) / item.id / item.data_path.name
        raise ItemFailed(f"{kept}: permission denied: the daemon (uid {os.getuid()}) cannot read it; "
                         f"make it readable to the daemon's user or group, then trainctl retry {item.id}",
                         transient=False)
    try:
        report = validate_item_data(item, config.spool, tick)
    except (InvalidData, TrainerError) as exc:
        raise ItemFailed(str(exc), transient=False) from None
    if not report.ok:
        raise ItemFailed("invalid data: " + "; ".join(report.describe(item.meta.name)[:3]), transient=False)
    if report.sha256 != item.meta.sha256:
        raise ItemFailed(f"its data changed on disk since it was queued (sha256 {report.sha256[:12]}, "
                         f"expected {item.meta.sha256[:12]}): enqueue the file again", transient=False)


def _readable(path: Path) -> bool:
    """False only for a permission error: any other problem is for the validation to report."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK))
    except PermissionError:
        return False
    except OSError:
        pass  # missing, a symlink, ...: the validation says what is wrong
    return True
