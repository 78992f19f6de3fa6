"""The trainer daemon: one per base dir, recovering before it is ready, never dying of one error.

    trainer run [--base-dir DIR] [--config FILE] [--exit-when-idle]

Lifecycle: take the base dir's lock (a second daemon exits at once, code 73), recover what a
crash left (the active item back to the head of its queue, stale requests and state reset,
tmp/ swept, checkpoints verified), load the model, tell systemd READY=1, then loop: control
requests, the inbox, housekeeping, and the next item, trained step by step with the control
requests checked after every optimizer step. Signal handlers only record; the loop acts.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import orjson

from trainer.config import Config, load_config
from trainer.daemon.notify import Notifier
from trainer.daemon.policy import error_backoff, memory_creeping, not_before, retry_delay, snapshot_due, space_needed
from trainer.errors import ConfigError, TrainerError
from trainer.exitcodes import ExitCode
from trainer.spool import control, queue
from trainer.spool.fsutil import write_atomic
from trainer.spool.item import display_name
from trainer.spool.layout import Layout
from trainer.spool.lock import AlreadyRunning, DaemonLock
from trainer.spool.sweep import sweep_tmp
from trainer.states import DaemonState, Event, ItemState
from trainer.timefmt import iso, utc_now

log = logging.getLogger("trainer.daemon.service")

STATE_WRITE_INTERVAL_S = 1.0  # the state file is rewritten at most this often while training


class Shutdown(Exception):
    """Leave the main loop (a stop request or a signal)."""


class Daemon:
    def __init__(self, layout: Layout, config: Config, *, config_path: Path | None = None,
                 notifier: Notifier | None = None, local_clock: Callable[[], datetime] = datetime.now) -> None:
        self.layout = layout
        # Local wall-clock time for the daily snapshot: read at every housekeeping, so a test
        # can move it (jump it back or forward) while the daemon runs.
        self.local_clock = local_clock
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.started_at = utc_now()
        self.stop_requested = False
        self.reload_requested = False
        self.engine = None
        self.item = None  # the active Item while training
        self.progress = None
        self.last_error: str | None = None
        self.model_load_s: float | None = None  # imports + weights, reported in the state file
        self.memory: list[int] = []  # resident bytes after each item
        self.gpu_memory: dict | None = None
        self._state_written = 0.0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._watcher = None
        self._scanner = None
        self._renamed: set[str] = set()
        self._inbox_refused: set[str] = set()  # inbox names it could not take, logged once

    # --- signals: handlers only record ------------------------------------------------------

    def install_signals(self) -> None:
        def on_stop(signum, frame):
            if self.stop_requested:
                # Second signal: stop at once. Nothing on disk can be half-written (every
                # publish is atomic); the next start resumes from the last checkpoint.
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            self.stop_requested = True
            os.write(self._wake_w, b"s")

        def on_hup(signum, frame):
            self.reload_requested = True
            os.write(self._wake_w, b"h")

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # --- the state everyone sees --------------------------------------------------------------

    def publish(self, state: DaemonState, *, reason: str | None = None, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._state_written < STATE_WRITE_INTERVAL_S:
            return
        self._state_written = now
        item = None
        if self.item is not None:
            item = {"id": self.item.id, "name": self.item.meta.name if self.item.meta else None}
            if self.progress is not None:
                p = self.progress
                item.update(step=p.step, total=p.total, loss=p.smoothed_loss, lr=p.lr, grad_norm=p.grad_norm,
                            tokens_per_s=round(p.tokens_per_s, 1), seconds_per_step=p.seconds_per_step,
                            global_step=p.global_step)
        checkpoint = None
        if self.engine is not None and self.engine.last_checkpoint is not None:
            checkpoint = {"step": self.engine.last_checkpoint.step, "name": self.engine.last_checkpoint.path.name}
        record = control.daemon_state(
            state.value, pid=os.getpid(), started_at=self.started_at, now=utc_now(), item=item,
            last_checkpoint=checkpoint, last_error=self.last_error, reason=reason, model_load_s=self.model_load_s,
            memory={"rss_after_items": self.memory[-5:], "gpu": self.gpu_memory,
                    "growth_limit": self.config.daemon.memory_growth_bytes})
        control.write_state(self.layout, record)
        summary = state.value + (f": {reason}" if reason else "")
        if item and "step" in item:
            loss = f" loss {item['loss']:.4f}" if isinstance(item.get("loss"), float) else ""
            summary += f" {item['name']} step {item['step']}/{item['total']}{loss}"
        self.notifier.status(summary)
        # The watchdog is fed only from here, i.e. only while the loop makes progress: a hung
        # step or a hung save stops the pings, and systemd restarts us.
        self.notifier.watchdog()

    # --- waiting ------------------------------------------------------------------------------

    def wait(self, seconds: float) -> None:
        """Sleep until a signal, a file in the inbox, a new item or a request (or the timeout)."""
        for directory, name in self._watcher.wait(seconds):
            if directory == self.layout.inbox:
                self._renamed.add(name)
        if self.reload_requested:
            self.reload()

    def reload(self) -> None:
        """SIGHUP: re-read the config; what can change without reloading the model changes."""
        self.reload_requested = False
        try:
            fresh = load_config(self.config_path or self.layout.config_file)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        from dataclasses import replace

        self.config = replace(self.config, spool=fresh.spool, daemon=fresh.daemon, checkpoint=fresh.checkpoint,
                              snapshot=fresh.snapshot, consolidate=fresh.consolidate)
        if self.engine is not None:
            self.engine.config = replace(self.engine.config, checkpoint=fresh.checkpoint)
        log.info("config reloaded (spool, daemon, checkpoint, snapshot, consolidate; model and train "
                 "settings need a restart)")

    # --- start-up -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Undo what a crash left, before anything else runs."""
        max_attempts = self.config.spool.max_attempts
        for item in queue.list_items(self.layout, [ItemState.ACTIVE]):
            attempts = (item.meta.attempts if item.meta else 0) + 1
            reason = "interrupted: the daemon stopped without finishing it (crash, kill or power loss)"
            if attempts >= max_attempts:
                queue.fail(self.layout, item.id, f"{reason}; gave up after {attempts} interrupted attempts "
                                                 f"(it may crash the daemon): trainctl retry {item.id} to try again",
                           kind="transient")
                log.error("%s failed %d times; moved to failed/", item.id, attempts)
            else:
                queue.requeue(self.layout, item.id, reason=reason)
                log.warning("%s was interrupted; back to the head of its queue (attempt %d of %d)",
                            item.id, attempts + 1, max_attempts)
        if control.clear_skip(self.layout):
            log.info("cleared a skip request left from before the restart")
        if control.clear_stop(self.layout):
            log.info("cleared a stop request left from before the restart")
        swept = sweep_tmp(self.layout)
        for name in swept.restored:
            log.warning("gave inbox file %s back after an interrupted intake", display_name(name))

    # --- the main loop ------------------------------------------------------------------------

    def run(self, *, exit_when_idle: bool = False) -> int:
        lock = DaemonLock(self.layout)
        try:
            lock.acquire()
        except AlreadyRunning as exc:
            print(f"trainer: {exc}", file=sys.stderr)
            return ExitCode.LOCKED
        try:
            return self._run_locked(exit_when_idle)
        finally:
            lock.release()

    def _run_locked(self, exit_when_idle: bool) -> int:
        from trainer.daemon.watch import Watcher
        from trainer.intake.inbox import InboxScanner

        started = time.monotonic()
        from trainer.train.engine import Engine  # torch and transformers: part of loading the model

        self._imports_s = time.monotonic() - started

        self.publish(DaemonState.STARTING, reason="recovering")
        self.recover()
        self.notifier.extend_timeout(600)  # loading a large model can take minutes
        self.engine = Engine(self.layout.root, self.config)
        self.engine.space_guard = self._space_guard
        self.engine.start()
        self.model_load_s = round(self._imports_s + self.engine.load_seconds, 3)
        dirs = [self.layout.inbox, self.layout.control, *[self.layout.pending(p) for p in _priorities()]]
        self._watcher = Watcher(dirs, self._wake_r)
        self._scanner = InboxScanner(self.layout.inbox, self.config.spool.inbox_settle_seconds)
        self.publish(DaemonState.IDLE)
        self.notifier.ready("idle")
        log.info("ready (pid %d, base dir %s, %s)", os.getpid(), self.layout.root,
                 "inotify" if self._watcher.uses_inotify else "polling")
        errors = 0
        try:
            while not self.stop_requested:
                try:
                    worked = self.tick()
                    errors = 0
                except Shutdown:
                    break
                except _RestartRequested:
                    raise
                except Exception as exc:  # the loop never dies of one exception
                    errors += 1
                    self.last_error = f"{iso(utc_now())} {type(exc).__name__}: {exc}"
                    log.error("error in the main loop (%d in a row):\n%s", errors, traceback.format_exc())
                    if errors >= self.config.daemon.max_consecutive_errors:
                        log.critical("%d errors in a row: exiting so that systemd restarts the daemon", errors)
                        self.publish(DaemonState.STOPPED, reason=f"{errors} errors in a row")
                        return ExitCode.FAILED
                    self.wait(error_backoff(errors))
                    continue
                if not worked:
                    if exit_when_idle and self._idle():
                        break
                    self.publish(DaemonState.PAUSED if self._paused() else DaemonState.IDLE,
                                 reason=(control.read_requests(self.layout).pause or {}).get("reason"))
                    self.wait(self.config.daemon.heartbeat_seconds)
        except _RestartRequested as exc:
            self.notifier.stopping(str(exc))
            self.publish(DaemonState.STOPPED, reason=str(exc))
            log.warning("%s: exiting for a clean restart", exc)
            return ExitCode.RESTART
        self.notifier.stopping()
        self.publish(DaemonState.STOPPED, reason="stopped")
        log.info("stopped")
        return ExitCode.OK

    def tick(self) -> bool:
        """One iteration; True if it did some work (then the loop goes on without waiting)."""
        requests = control.read_requests(self.layout)
        if requests.stop is not None:
            control.clear_stop(self.layout)
            log.info("stop requested%s", f": {requests.stop.get('reason')}" if requests.stop.get("reason") else "")
            raise Shutdown
        if requests.skip is not None:
            control.clear_skip(self.layout)  # nothing is training: a skip names an item no longer active
        worked = self._take_inbox()
        self._housekeeping()
        if self._paused():
            return worked
        if not self._disk_ok():
            return False
        item = self._claim()
        if item is None:
            if self._idle():
                self._consolidate_if_due(requests)
            return worked
        self._train(item)
        return True

    # --- items --------------------------------------------------------------------------------

    def _claim(self):
        cursor = self.engine.state.cursor
        if cursor:  # finish the item the checkpoint is in the middle of before any other
            item = queue.claim_specific(self.layout, cursor["item_id"])
            if item is not None:
                return item
        return queue.claim_next(self.layout, utc_now())

    def _train(self, item) -> None:
        from trainer.train.engine import ItemFailed

        self.item, self.progress = item, None
        self.publish(DaemonState.TRAINING)
        try:
            self._check_item_data(item)
            plan = self.engine.prepare(item.id, item.meta.sha256, item.data_path)
            if plan.stats:  # empty when resuming: recorded the first time
                queue.set_tokens(self.layout, item.id, plan.stats)
            log.info("training %s (%s): %d steps%s", item.id, display_name(item.meta.name), plan.total_steps,
                     f", resuming at step {self.engine.state.cursor['item_step']}"
                     if not plan.stats and self.engine.state.cursor else "")
            while True:
                self._action = control.Action.NONE
                if self.engine.train(plan, self._after_step):
                    queue.complete(self.layout, item.id, steps=plan.total_steps, global_step=self.engine.state.global_step)
                    log.info("done %s", item.id)
                    self._after_item()
                    return
                if self._action is control.Action.PAUSE:
                    self._paused_wait()
                    continue
                if self._action is control.Action.SKIP:
                    request = control.read_requests(self.layout).skip or {}
                    reason = request.get("reason") or "no reason given"
                    step = self.progress.step if self.progress else 0
                    queue.fail(self.layout, item.id, f"skipped by request at step {step}: {reason}",
                               kind="skipped", event=Event.SKIPPED)
                    control.clear_skip(self.layout)
                    log.info("skipped %s at step %d", item.id, step)
                    return
                # A stop: the checkpoint holds the cursor; the item waits at the head of its queue.
                queue.requeue(self.layout, item.id, reason="daemon stopping", count_attempt=False)
                raise Shutdown
        except ItemFailed as failed:
            self._item_failed(item, failed.reason, transient=failed.transient)
        except (Shutdown, _RestartRequested):
            raise
        except Exception as exc:
            log.error("training %s failed:\n%s", item.id, traceback.format_exc())
            self._item_failed(item, f"{type(exc).__name__}: {exc}", transient=True)
        finally:
            self.item, self.progress = None, None

    def _check_item_data(self, item) -> None:
        """Validate again at claim: the queued copy must still be what was validated."""
        from trainer.errors import InvalidData
        from trainer.intake import enqueue
        from trainer.train.engine import ItemFailed

        if item.meta is None:
            raise ItemFailed(f"its metadata is unreadable ({item.meta_problem}): trainctl retry rebuilds it",
                             transient=False)
        if not _readable(item.data_path):
            # Named where the file will be (failed/ID/), not where it is now: the message is
            # read after the move, and it is that path which must be made readable.
            kept = self.layout.state_dir(ItemState.FAILED) / item.id / item.data_path.name
            raise ItemFailed(f"{kept}: permission denied: the daemon (uid {os.getuid()}) cannot read it; "
                             f"make it readable to the daemon's user or group, then trainctl retry {item.id}",
                             transient=False)
        try:
            report = enqueue.validate_item_data(item, self.config.spool)
        except (InvalidData, TrainerError) as exc:
            raise ItemFailed(str(exc), transient=False) from None
        if not report.ok:
            raise ItemFailed("invalid data: " + "; ".join(report.describe(item.meta.name)[:3]), transient=False)
        if report.sha256 != item.meta.sha256:
            raise ItemFailed(f"its data changed on disk since it was queued (sha256 {report.sha256[:12]}, "
                             f"expected {item.meta.sha256[:12]}): enqueue the file again", transient=False)

    def _item_failed(self, item, reason: str, *, transient: bool) -> None:
        self.last_error = f"{iso(utc_now())} {item.id}: {reason}"
        current = queue.find(self.layout, item.id)
        if current.state is not ItemState.ACTIVE:
            return
        attempts = (current.meta.attempts if current.meta else 0) + 1
        if transient and attempts < self.config.spool.max_attempts:
            delay = retry_delay(attempts, self.config.daemon.retry_delay_seconds)
            queue.requeue(self.layout, item.id, reason=reason, not_before=not_before(utc_now(), delay))
            log.warning("%s failed (%s); retrying in %.0f s (attempt %d of %d)", item.id, reason, delay,
                        attempts + 1, self.config.spool.max_attempts)
        else:
            why = reason if not transient else f"{reason} (attempt {attempts} of {self.config.spool.max_attempts})"
            queue.fail(self.layout, item.id, why, kind="transient" if transient else "permanent")
            log.error("%s failed: %s", item.id, why)

    def _after_step(self, progress) -> bool:
        """After every optimizer step: publish progress, obey requests and signals."""
        self.progress = progress
        if progress.step % self.config.train.log_every_steps == 0 or progress.step == progress.total:
            log.info("%s step %d/%d loss %.4f lr %.2e %.0f tok/s", progress.item_id, progress.step, progress.total,
                     progress.loss if progress.loss is not None else float("nan"), progress.lr,
                     progress.tokens_per_s)
        self.publish(DaemonState.TRAINING, force=False)
        if self.reload_requested:
            self.reload()
        if self.stop_requested:
            self._action = control.Action.STOP
            return False
        action = control.decide(control.read_requests(self.layout), progress.item_id)
        if action is control.Action.STOP:
            control.clear_stop(self.layout)
            self.stop_requested = True
        if progress.checkpointed:
            self._housekeeping()
        self._action = action
        return action is control.Action.NONE

    def _paused_wait(self) -> None:
        """Paused mid-item: the model stays loaded, the watchdog is still fed."""
        log.info("paused")
        while True:
            requests = control.read_requests(self.layout)
            if self.stop_requested or requests.stop is not None:
                control.clear_stop(self.layout)
                self._action = control.Action.STOP
                queue.requeue(self.layout, self.item.id, reason="daemon stopping", count_attempt=False)
                raise Shutdown
            if requests.skip is not None and requests.skip.get("item") == self.item.id:
                return  # the caller's next train() returns at once and the skip is handled
            if requests.pause is None:
                log.info("resumed")
                return
            self.publish(DaemonState.PAUSED, reason=requests.pause.get("reason"))
            self.wait(self.config.daemon.heartbeat_seconds)

    def _resident_bytes(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def _after_item(self) -> None:
        import torch

        self.memory.append(self._resident_bytes())
        if torch.cuda.is_available():
            self.gpu_memory = {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}
        if memory_creeping(self.memory, self.config.daemon.memory_growth_bytes):
            self.engine.current_checkpoint()
            raise _RestartRequested(f"resident memory grew from {self.memory[0]:,} to {self.memory[-1]:,} bytes "
                                    f"over {len(self.memory)} items")

    # --- the inbox, disk, housekeeping ---------------------------------------------------------

    def _take_inbox(self) -> bool:
        """Take the complete files from the inbox; True if any was taken (work was done).

        A file it cannot take (a read-only inbox, someone else's file) stays where it is and
        is tried again at every heartbeat, but it is not work: counting it as such made the
        loop spin without waiting. It is logged once, not at every try.
        """
        from trainer.intake.inbox import ingest

        renamed, self._renamed = frozenset(self._renamed), set()
        ready = self._scanner.ready(time.time(), time.monotonic(), renamed)
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
                log.info("inbox: %s -> %s (%s)", display_name(name), taken.item_id, taken.state.value)
        self._inbox_refused &= set(ready)  # forget the ones that went away
        return taken_any

    def _free_bytes(self) -> int:
        stats = os.statvfs(self.layout.root)
        return stats.f_bavail * stats.f_frsize

    def _disk_ok(self) -> bool:
        need = space_needed(self.engine.checkpoint_estimate(), self.config.daemon.free_space_margin,
                            self.config.daemon.min_free_bytes)
        if self._free_bytes() >= need:
            return True
        self.engine.store.retain(keep=2)  # short of space: keep only the latest two
        have = self._free_bytes()
        if have >= need:
            return True
        reason = f"disk: need {need:,} bytes free, have {have:,}"
        log.warning("blocked: %s", reason)
        self.publish(DaemonState.BLOCKED, reason=reason)
        self.wait(self.config.daemon.disk_check_seconds)
        return False

    def _space_guard(self, estimate: int) -> None:
        """Before every checkpoint: wait (blocked, still heartbeating) until the disk has room.

        Also asks systemd for time: a save during a stop must not be killed by TimeoutStopSec.
        EXTEND_TIMEOUT_USEC pushes back the watchdog as well, so the extension is sized to the
        save (~50 MB/s worst case, x3, at least 10 s) and not more: a generous floor would be
        added to the time a hang after a save goes unnoticed.
        """
        self.notifier.extend_timeout(max(10.0, estimate / 50e6 * 3))
        need = space_needed(estimate, self.config.daemon.free_space_margin, self.config.daemon.min_free_bytes)
        while True:
            have = self._free_bytes()
            if have >= need:
                return
            self.engine.store.retain(keep=2)  # short of space: keep only the latest two
            if self._free_bytes() >= need:
                return
            reason = f"disk: need {need:,} bytes free, have {have:,} (checkpoint waiting)"
            log.warning("blocked: %s", reason)
            self.publish(DaemonState.BLOCKED, reason=reason)
            if self.stop_requested:
                raise Shutdown
            self.wait(self.config.daemon.disk_check_seconds)

    def _housekeeping_file(self) -> Path:
        return self.layout.run / "housekeeping.json"

    def _housekeeping_state(self) -> dict:
        try:
            data = orjson.loads(self._housekeeping_file().read_bytes())
            return data if isinstance(data, dict) else {}
        except (OSError, orjson.JSONDecodeError):
            return {}

    def _save_housekeeping(self, **changes) -> None:
        state = {**self._housekeeping_state(), **changes}
        write_atomic(self.layout.tmp, self._housekeeping_file(), orjson.dumps(state))

    def _housekeeping(self) -> None:
        from trainer.train import releases
        state = self._housekeeping_state()
        day = snapshot_due(state.get("last_snapshot"), self.local_clock(), self.config.snapshot.at)
        if day is None or self.engine.state.global_step == 0:
            return
        try:
            releases.snapshot(self.engine, self.layout.root / "snapshots", day, keep_days=self.config.snapshot.keep_days)
        except releases.NotEnoughSpace as exc:
            log.warning("snapshot postponed: %s", exc.strerror)
            return
        self._save_housekeeping(last_snapshot=day)

    def _consolidate_if_due(self, requests) -> None:
        from trainer.train import releases
        done = self.engine.state.items_completed
        asked = requests.consolidate is not None
        automatic = self.config.daemon.consolidate_when_idle and done > self._housekeeping_state().get(
            "consolidated_items", 0)
        if not (asked or automatic) or self.engine.state.global_step == 0:
            if asked:
                control.clear_consolidate(self.layout)
            return
        self.publish(DaemonState.CONSOLIDATING)
        try:
            version = releases.consolidate(self.engine, self.layout.root / "models",
                                          keep_versions=self.config.consolidate.keep_versions)
        except releases.NotEnoughSpace as exc:
            log.warning("consolidation postponed: %s", exc.strerror)
            return
        self._save_housekeeping(consolidated_items=done, last_version=version.name)
        control.clear_consolidate(self.layout)
        log.info("consolidated into %s", version.name)

    def _paused(self) -> bool:
        return control.read_requests(self.layout).pause is not None

    def _idle(self) -> bool:
        q = queue.counts(self.layout)
        if q["pending"] or q["active"]:
            return False
        from trainer.intake.inbox import is_candidate_name

        with os.scandir(self.layout.inbox) as entries:
            return not any(is_candidate_name(e.name) and e.is_file(follow_symlinks=False) for e in entries)


class _RestartRequested(Exception):
    """Memory kept growing: checkpointed, exit for systemd to restart us cleanly."""


def _readable(path: Path) -> bool:
    """False only for a permission error: any other problem is for the validation to report."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK))
    except PermissionError:
        return False
    except OSError:
        pass  # missing, a symlink, ...: the validation says what is wrong
    return True


def _priorities():
    from trainer.states import Priority

    return Priority.in_service_order()
