"""The trainer daemon: one per base dir, recovering before it is ready, never dying of one error.

Lifecycle: take the base dir's lock (a second daemon exits at once, code 73), recover what a
crash left (the active item back to the head of its queue, stale requests reset, tmp/ swept,
checkpoints verified by the engine), load the model, tell systemd READY=1, then loop:
``tick(now)`` reads the control requests, takes the inbox, does the housekeeping and trains
the next item (``items.ItemTrainer``), checking the requests after every optimizer step.
Signal handlers only record; a stop, whatever asked for it, is acted on in ``stop_wanted``
and by leaving the loop.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from trainer.clock import Now, SystemClock
from trainer.config import Config, load_config
from trainer.daemon import items, rollback, startup
from trainer.daemon.housekeeping import Housekeeping
from trainer.daemon.notify import Notifier
from trainer.daemon.policy import error_backoff, memory_creeping
from trainer.daemon.report_page import ReportPage
from trainer.daemon.reporter import Activity, MetricsSink, Reporter
from trainer.errors import AlreadyRunning, ConfigError, DiskUnwritable, RestartRequested, Shutdown
from trainer.exitcodes import ExitCode
from trainer.spool import control, events, queue
from trainer.spool.fsutil import disk_refusal
from trainer.spool.item import display_name
from trainer.spool.layout import Layout
from trainer.spool.lock import DaemonLock
from trainer.states import DaemonState, Priority
from trainer.timefmt import iso, utc_now
from trainer.train.protocol import Progress, TrainingEngine

log = logging.getLogger("trainer.daemon")

EngineFactory = Callable[[Path, Config], TrainingEngine]
T = TypeVar("T")


def torch_engine(root: Path, config: Config) -> TrainingEngine:
    from trainer.train.engine import Engine  # torch and transformers: part of loading the model

    return Engine(root, config)


class Signals:
    """SIGTERM/SIGINT ask for a stop, SIGHUP for a config reload; both wake the loop's wait."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self.wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        def on_stop(signum, frame):
            if self.stop:
                # Second signal: stop at once. Nothing on disk can be half-written (every
                # publish is atomic); the next start resumes from the last checkpoint.
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            self.stop = True
            os.write(self._wake_w, b"s")

        def on_hup(signum, frame):
            self.reload = True
            os.write(self._wake_w, b"h")

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)


class Daemon:
    def __init__(self, layout: Layout, config: Config, *, config_path: Path | None = None,
                 engine_factory: EngineFactory = torch_engine, clock=None, notifier: Notifier | None = None,
                 metrics: MetricsSink | None = None) -> None:
        self.layout = layout
        self.config = config
        self.config_path = config_path
        self.engine_factory = engine_factory
        self.clock = clock or SystemClock()
        self.retries = items.RetryClock(self.clock)
        self.notifier = notifier or Notifier()
        self.signals = Signals()
        self.activity = Activity()
        self.reporter = Reporter(layout, self.notifier, memory_growth_limit=config.daemon.memory_growth_bytes,
                                 metrics=metrics)
        self.reporter.stale_after_s = config.daemon.stale_after_seconds
        self.engine: TrainingEngine | None = None
        self.housekeeping: Housekeeping | None = None
        self.report_page = ReportPage(layout)
        self._watcher = None
        self._scanner = None
        self._renamed: set[str] = set()
        self._inbox_refused: set[str] = set()  # inbox names it could not take, logged once
        self._disk_refused: DiskUnwritable | None = None  # the refusal being waited out, logged once

    @property
    def last_error(self) -> str | None:
        return self.activity.last_error

    # --- what the loop and the items share (items.Host) -----------------------------------------

    def publish(self, state: DaemonState, *, reason: str | None = None, force: bool = True) -> None:
        checkpoint = self.engine.last_checkpoint if self.engine is not None else None
        self.activity.world = self.engine.world_view() if self.engine is not None else None
        self.reporter.publish(state, self.activity, checkpoint, reason=reason, force=force)

    def wait(self, seconds: float) -> None:
        """Sleep until a signal, a file in the inbox, a new item or a request (or the timeout)."""
        if self.engine is not None:
            self.engine.keep_alive()  # other ranks wait in a collective: keep it within its timeout
        for directory, name in self._watcher.wait(seconds):
            if directory == self.layout.inbox:
                self._renamed.add(name)
        if self.signals.reload:
            self.reload()

    def stop_wanted(self, requests: control.Requests | None = None) -> bool:
        """A signal or a stop request: the one place a stop is noticed (and its request consumed)."""
        requests = requests if requests is not None else control.read_requests(self.layout)
        if requests.stop is not None:
            try:
                control.clear_stop(self.layout)
            except OSError as exc:  # a read-only disk: stop all the same; the next start clears it
                if disk_refusal(exc) is None:
                    raise
            reason = requests.stop.get("reason")
            log.info("stop requested%s", f": {reason}" if reason else "")
            self.signals.stop = True
        return self.signals.stop

    def after_step(self, progress: Progress) -> None:
        if progress.step % self.config.train.log_every_steps == 0 or progress.step == progress.total:
            log.info("%s step %d/%d loss %.4f lr %.2e %.0f tok/s", progress.item_id, progress.step, progress.total,
                     progress.loss if progress.loss is not None else float("nan"), progress.lr,
                     progress.tokens_per_s)
        self.reporter.step(progress)
        self._disk_works()
        self.publish(DaemonState.TRAINING, force=False)
        if self.signals.reload:
            self.reload()
        if progress.checkpointed:
            self.until_written(lambda: self.housekeeping.snapshot_if_due(self.clock.now().local))
        self.report_page.refresh_if_due(self.config, self.clock.now().monotonic)

    # --- a disk that refuses writes (full, over quota, read-only) -------------------------------

    def block(self, reason: str, seconds: float) -> None:
        """State blocked with ``reason`` for ``seconds``, heartbeating (and feeding the watchdog)
        every ``heartbeat_seconds``; raises Shutdown as soon as a stop is wanted."""
        deadline = time.monotonic() + seconds
        while True:
            self.publish(DaemonState.BLOCKED, reason=reason)
            if self.stop_wanted():
                raise Shutdown
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wait(min(left, self.config.daemon.heartbeat_seconds))
            events.flush(self.layout)

    def wait_for_disk(self, refused: DiskUnwritable) -> None:
        """The disk refused a write: blocked, with the reason, for ``disk_check_seconds``; then
        the caller tries the same write again. Nothing is failed and no attempt is counted: it
        is the disk's fault, not the item's."""
        daemon = self.config.daemon
        reason = (f"disk: {refused}: waiting until it takes writes again "
                  f"(looked at every {daemon.disk_check_seconds:g} s)")
        if self._disk_refused is None or self._disk_refused.errno != refused.errno:
            log.warning("blocked: %s", reason)  # once, not at every look
        self._disk_refused = refused
        self.block(reason, daemon.disk_check_seconds)

    def until_written(self, action: Callable[[], T]) -> T:
        """Run ``action`` until the disk lets it write: each refusal blocks (``wait_for_disk``),
        then it runs again. For actions that change nothing when a write of theirs fails."""
        while True:
            try:
                result = action()
            except Exception as exc:
                refused = disk_refusal(exc)
                if refused is None:
                    raise
                self.wait_for_disk(refused)
                continue
            self._disk_works()
            return result

    def _disk_works(self) -> None:
        if self._disk_refused is not None:
            log.info("the disk takes writes again: resuming")
            self._disk_refused = None

    def reload(self) -> None:
        """SIGHUP: re-read the config; what can change without reloading the model changes."""
        self.signals.reload = False
        try:
            fresh = load_config(self.config_path or self.layout.config_file)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        self.config = replace(self.config, spool=fresh.spool, daemon=fresh.daemon, checkpoint=fresh.checkpoint,
                              snapshot=fresh.snapshot, consolidate=fresh.consolidate, events=fresh.events,
                              report=fresh.report)
        self.reporter.stale_after_s = fresh.daemon.stale_after_seconds
        if self.engine is not None:
            self.engine.set_checkpoint_config(fresh.checkpoint)
            self.housekeeping.config = self.config
        log.info("config reloaded (spool, daemon, checkpoint, snapshot, consolidate, events, report; model and "
                 "train settings need a restart)")

    # --- start-up -------------------------------------------------------------------------------

    def start(self) -> None:
        """Upgrade, recover, load the model, watch the directories; READY=1 comes after this."""
        from trainer.daemon.watch import Watcher
        from trainer.intake.inbox import InboxScanner

        startup.upgrade_base_dir(self.layout, self.publish, self.notifier)
        dirs = [self.layout.inbox, self.layout.control, *[self.layout.pending(p) for p in Priority.in_service_order()]]
        self._watcher = Watcher(dirs, self.signals.wake_r)
        self.publish(DaemonState.STARTING, reason="recovering")
        self.until_written(lambda: startup.recover(self.layout, self.config))  # a full disk: blocked, not a crash loop
        self.notifier.extend_timeout(control.STARTUP_ALLOWANCE_S)  # loading a large model can take minutes
        # Said before the load, which cannot heartbeat: trainctl status shows "starting: loading
        # the model" (given STARTUP_ALLOWANCE_S), not a daemon gone unresponsive.
        self.publish(DaemonState.STARTING, reason="loading the model")
        started = time.monotonic()
        self.engine = self.engine_factory(self.layout.root, self.config)  # imports torch
        imports_s = time.monotonic() - started
        self.housekeeping = Housekeeping(self.layout, self.config, self.engine, self.notifier, block=self.block,
                                         until_written=self.until_written)
        self.engine.space_guard = self.housekeeping.space_guard
        self.engine.disk_wait = self.wait_for_disk
        # Between claiming an item and its first step (validated again, surveyed): the state
        # file and the watchdog, at most once a second (the reporter's throttle).
        self.engine.heartbeat = lambda: self.publish(DaemonState.TRAINING, force=False)
        self.engine.start()
        self.activity.model_load_s = round(imports_s + self.engine.load_seconds, 3)
        self._scanner = InboxScanner(self.layout.inbox, self.config.spool.inbox_settle_seconds)
        self._trainer = items.ItemTrainer(self, self.layout, self.engine, self.activity, self.retries)

    # --- the main loop --------------------------------------------------------------------------

    def run(self, *, exit_when_idle: bool = False, lock: DaemonLock | None = None) -> int:
        """``lock``: the base dir's (default); under the launcher, its check that the launcher holds it."""
        lock = lock or DaemonLock(self.layout)
        try:
            lock.acquire()
        except AlreadyRunning as exc:
            print(f"trainer: {exc}", file=sys.stderr)
            return ExitCode.LOCKED
        try:
            try:
                self.start()
            except Shutdown:  # asked to stop while recovery waited for the disk
                return self._stopped()
            self.publish(DaemonState.IDLE)
            self.notifier.ready("idle")
            log.info("ready (pid %d, base dir %s, %s)", os.getpid(), self.layout.root,
                     "inotify" if self._watcher.uses_inotify else "polling")
            return self._loop(exit_when_idle)
        except RestartRequested as exc:
            self.notifier.stopping(str(exc))
            self.publish(DaemonState.STOPPED, reason=str(exc))
            log.warning("%s: exiting for a clean restart", exc)
            return ExitCode.RESTART
        finally:
            lock.release()

    def _loop(self, exit_when_idle: bool) -> int:
        errors = 0
        while not self.signals.stop:
            try:
                worked = self.tick(self.clock.now())
                errors = 0
            except Shutdown:
                break
            except RestartRequested:
                raise
            except Exception as exc:  # the loop never dies of one exception
                refused = disk_refusal(exc)
                if refused is not None:  # the disk's doing (the inbox intake, a request to clear...)
                    try:
                        self.wait_for_disk(refused)
                    except Shutdown:
                        break
                    continue
                errors += 1
                self.activity.last_error = f"{iso(utc_now())} {type(exc).__name__}: {exc}"
                log.error("error in the main loop (%d in a row):\n%s", errors, traceback.format_exc())
                if errors >= self.config.daemon.max_consecutive_errors:
                    log.critical("%d errors in a row: exiting so that systemd restarts the daemon", errors)
                    self.publish(DaemonState.STOPPED, reason=f"{errors} errors in a row")
                    return ExitCode.FAILED
                self.wait(error_backoff(errors))
                continue
            if not worked:
                if exit_when_idle and queue.is_idle(self.layout):
                    break
                pause = control.read_requests(self.layout).pause
                self.publish(DaemonState.PAUSED if pause else DaemonState.IDLE, reason=(pause or {}).get("reason"))
                self.wait(self.config.daemon.heartbeat_seconds)
        return self._stopped()

    def _stopped(self) -> int:
        self.notifier.stopping()
        self.publish(DaemonState.STOPPED, reason="stopped")
        self._report_unrecorded_events()
        log.info("stopped")
        return ExitCode.OK

    def _report_unrecorded_events(self) -> None:
        """Event lines the disk never took are written to the journal instead (the changes
        they record are on disk)."""
        if events.flush(self.layout):
            for line in events.waiting(self.layout):
                log.error("event log: not recorded (the disk refused it): %s", line.decode(errors="replace").rstrip())

    def tick(self, now: Now) -> bool:
        """One iteration; True if it did some work (then the loop goes on without waiting)."""
        requests = control.read_requests(self.layout)
        if self.stop_wanted(requests):
            raise Shutdown
        events.flush(self.layout)
        if requests.skip is not None:
            control.clear_skip(self.layout)  # nothing is training: a skip names an item no longer active
        worked = self._take_inbox(now)
        self.housekeeping.snapshot_if_due(now.local)
        self.housekeeping.expire_events_if_due(now.utc)
        self.report_page.refresh_if_due(self.config, now.monotonic)
        self._disk_works()
        if requests.rollback is not None:  # between items: nothing is training now
            rollback.roll_back(self.layout, self.config, self.engine, requests.rollback, self.until_written)
            return True
        if requests.pause is not None:
            return worked
        if queue.counts(self.layout)["pending"] and not self.housekeeping.room_to_claim():
            return True  # blocked, and it has waited: look again at once, never "idle" in between
        item = items.claim(self.layout, self.engine, self.retries)
        if item is None:
            self._consolidate_if_due(requests)
            return worked
        outcome = self._trainer.train(item)
        if outcome is items.Outcome.STOPPED:
            raise Shutdown
        if outcome is items.Outcome.DONE:
            self._check_memory()
        return True

    def _consolidate_if_due(self, requests: control.Requests) -> None:
        if not queue.is_idle(self.layout):
            return  # never mid-queue: a request waits for the next idle moment
        asked = requests.consolidate is not None
        if self.housekeeping.consolidation_due(asked):
            self.publish(DaemonState.CONSOLIDATING)
            if self.housekeeping.consolidate() is None:
                return  # postponed for lack of space: the request stays
        if asked:  # waits for a read-only disk: a request left behind would consolidate again
            self.until_written(lambda: control.clear_consolidate(self.layout))

    def _check_memory(self) -> None:
        memory = self.engine.memory()
        self.activity.rss_after_items.append(memory["rss"])
        self.activity.gpu = memory["gpu"]
        samples = self.activity.rss_after_items
        if memory_creeping(samples, self.config.daemon.memory_growth_bytes):
            self.engine.current_checkpoint()
            raise RestartRequested(f"resident memory grew from {samples[0]:,} to {samples[-1]:,} bytes "
                                   f"over {len(samples)} items")

    def _take_inbox(self, now: Now) -> bool:
        """Take the complete files from the inbox; True if any was taken (work was done).

        A file it cannot take (a read-only inbox, someone else's file) stays where it is and
        is tried again at every heartbeat, but it is not work: counting it as such made the
        loop spin without waiting. It is logged once, not at every try.
        """
        from trainer.intake.inbox import ingest

        renamed, self._renamed = frozenset(self._renamed), set()
        ready = self._scanner.ready(now.utc.timestamp(), now.monotonic, renamed)
        taken_any = False
        for name in ready:
            try:
                taken = ingest(self.layout, name, self.config.spool)
            except PermissionError as exc:
                if name not in self._inbox_refused:
                    self._inbox_refused.add(name)
                    log.error("inbox: cannot take %s: %s (fix its permissions; tried again at every heartbeat)",
                              display_name(str(exc.filename or name)), exc.strerror)
                continue
            self._inbox_refused.discard(name)
            if taken is not None:
                taken_any = True
                if taken.problems:  # refused: say why where the operator looks, not just "(failed)"
                    log.warning("inbox: %s -> %s (failed validation: %s%s)", display_name(name), taken.item_id,
                                "; ".join(taken.problems[:3]),
                                f"; and {len(taken.problems) - 3} more" if len(taken.problems) > 3 else "")
                else:
                    log.info("inbox: %s -> %s (%s)", display_name(name), taken.item_id, taken.state.value)
        self._inbox_refused &= set(ready)  # forget the ones that went away
        return taken_any

