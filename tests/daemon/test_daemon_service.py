"""The daemon's service loop in-process, on a fake engine: ticks driven with explicit clocks.

Torch-free and fast; the same behaviours on the real model and the real process are in
test_daemon.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest
from helpers.daemon_proc import enqueue_sample, small_config
from helpers.fake_engine import FakeEngine

from trainer.clock import Now
from trainer.config import default_config_toml, load_config
from trainer.daemon import items
from trainer.daemon.service import Daemon
from trainer.errors import Shutdown
from trainer.exitcodes import ExitCode
from trainer.spool import control, queue
from trainer.spool.layout import init_base
from trainer.states import ItemState

DAY = datetime(2031, 5, 14, 13, 0)


@pytest.fixture
def layout(tmp_path):
    layout, _ = init_base(tmp_path / "base", default_config_toml())
    layout.config_file.write_text(small_config(snapshot={"at": "12:00"}, daemon={"consolidate_when_idle": True}))
    return layout


def daemon_on(layout, clock=None, metrics=None, **engine_args) -> Daemon:
    engines = []

    def factory(root, config):
        engines.append(FakeEngine(root, config, **engine_args))
        return engines[-1]

    return Daemon(layout, load_config(layout.config_file), engine_factory=factory, clock=clock, metrics=metrics)


def at(local: datetime, monotonic: float = 0.0) -> Now:
    return Now(utc=local, local=local, monotonic=monotonic)


def test_ticks_train_each_item_then_report_no_work(layout, tmp_path):
    ids = [enqueue_sample(layout, tmp_path, records=5, seed=n, name=f"i{n}") for n in range(2)]
    daemon = daemon_on(layout)
    daemon.start()
    assert daemon.tick(at(DAY)) and daemon.tick(at(DAY))
    assert [queue.find(layout, i).state for i in ids] == [ItemState.DONE, ItemState.DONE]
    assert daemon.engine.state.global_step == 10
    assert daemon.tick(at(DAY)) is False, "nothing left: the loop may wait"
    assert daemon.engine.versions == ["v001"], "idle after new items: consolidated once"
    assert daemon.tick(at(DAY)) is False and daemon.engine.versions == ["v001"]


class SetClock:
    """A clock the test moves; read by the daemon at every tick and after every step."""

    def __init__(self, local: datetime) -> None:
        self.local = local

    def now(self) -> Now:
        return at(self.local)


def test_a_clock_moving_back_and_forward_takes_one_snapshot_per_new_day(layout, tmp_path):
    enqueue_sample(layout, tmp_path, records=5)
    clock = SetClock(DAY)
    daemon = daemon_on(layout, clock=clock)
    daemon.start()
    daemon.tick(clock.now())  # trains: the first checkpoint after 12:00 takes the day's snapshot
    # An NTP correction back a day, then forward to the next day: one more snapshot, not two.
    for clock.local in (DAY, DAY - timedelta(days=1), DAY, DAY + timedelta(days=1), DAY + timedelta(days=1)):
        daemon.tick(clock.now())
    assert daemon.engine.snapshots == ["2031-05-14", "2031-05-15"]
    assert orjson.loads(layout.housekeeping.read_bytes())["last_snapshot"] == "2031-05-15"


def test_stop_pause_and_skip_requests_are_obeyed_at_the_next_step(layout, tmp_path):
    first = enqueue_sample(layout, tmp_path, records=5, name="first")
    second = enqueue_sample(layout, tmp_path, records=5, seed=2, name="second")

    class SkipAtStep3:
        """A metrics sink that asks, as trainctl skip would, mid-item."""

        def step(self, progress):
            if progress.step == 3:
                control.send_skip(layout, progress.item_id, reason="not this one")

        def state(self, state, reason):
            pass

    daemon = daemon_on(layout, steps_per_item=50, metrics=SkipAtStep3())
    daemon.start()
    assert daemon.tick(at(DAY))
    skipped = queue.find(layout, first)
    assert skipped.state is ItemState.FAILED
    assert skipped.meta.last_error.message == "skipped by request at step 3: not this one"
    control.send_pause(layout, "maintenance")
    assert daemon.tick(at(DAY)) is False, "paused: nothing claimed"
    assert queue.find(layout, second).state is ItemState.PENDING
    control.send_resume(layout)
    control.send_stop(layout)
    with pytest.raises(Shutdown):
        daemon.tick(at(DAY))
    assert queue.find(layout, second).state is ItemState.PENDING and queue.find(layout, second).meta.attempts == 0
    assert control.read_requests(layout).stop is None, "the stop request was consumed"


def test_an_exception_in_the_loop_is_survived(layout, tmp_path):
    item_id = enqueue_sample(layout, tmp_path, records=5)

    class FlakyClock:
        calls = 0

        def now(self):
            self.calls += 1
            if self.calls <= 2:
                raise RuntimeError("injected failure")
            return at(DAY)

    daemon = daemon_on(layout, clock=FlakyClock())
    assert daemon.run(exit_when_idle=True) == ExitCode.OK
    assert queue.find(layout, item_id).state is ItemState.DONE
    assert "injected failure" in daemon.last_error


def test_growing_memory_after_items_asks_for_a_clean_restart(layout, tmp_path):
    for n in range(5):
        enqueue_sample(layout, tmp_path, records=5, seed=n, name=f"m{n}")
    daemon = daemon_on(layout, rss=iter([1 << 30, 2 << 30, 3 << 30, 4 << 30, 5 << 30]))
    assert daemon.run(exit_when_idle=True) == ExitCode.RESTART
    state = orjson.loads(layout.daemon_state.read_bytes())
    assert state["state"] == "stopped" and "resident memory grew" in state["reason"]
    assert queue.counts(layout)["active"] == 0, "the item finished before the restart"


def test_an_item_failing_twice_is_retried_then_failed_with_its_attempts(layout, tmp_path, monkeypatch):
    item_id = enqueue_sample(layout, tmp_path, records=5)
    daemon = daemon_on(layout)
    daemon.start()

    def broken(*args):
        raise RuntimeError("out of luck")

    monkeypatch.setattr(daemon.engine, "prepare", broken)
    daemon.tick(at(DAY))
    retried = queue.find(layout, item_id)
    assert retried.state is ItemState.PENDING and retried.meta.attempts == 1 and retried.meta.not_before


@pytest.mark.parametrize("attempts_before, transient, interrupted, give_up, delayed", [
    (0, True, False, False, True),
    (0, True, True, False, False),  # a crash mid-item: back at the head of the queue at once
    (2, True, False, True, False),  # the third attempt of three failed
    (0, False, False, True, False),  # permanent: never retried
])
def test_after_failure_is_one_policy_for_failures_and_interruptions(attempts_before, transient, interrupted,
                                                                     give_up, delayed):
    decision = items.after_failure(attempts_before, transient=transient, max_attempts=3, retry_base_s=30,
                                   interrupted=interrupted)
    assert decision.give_up is give_up and decision.attempts == attempts_before + 1
    assert (decision.delay_s > 0) is delayed


class JumpingClock:
    """The wall clock jumps when the test says; the monotonic clock only runs forward."""

    def __init__(self, utc: datetime) -> None:
        self.utc = utc
        self.monotonic = 0.0

    def now(self) -> Now:
        return Now(utc=self.utc, local=self.utc.replace(tzinfo=None), monotonic=self.monotonic)


def _failing_daemon(layout, clock):
    daemon = daemon_on(layout, clock=clock)
    daemon.start()

    def broken(*args):
        raise OSError(5, "Input/output error (simulated)")

    daemon.engine.prepare = broken
    return daemon


def test_a_retry_delay_is_kept_on_the_monotonic_clock_through_wall_clock_jumps(layout, tmp_path):
    layout.config_file.write_text(small_config(daemon={"retry_delay_seconds": 30}, spool={"max_attempts": 5}))
    item_id = enqueue_sample(layout, tmp_path, records=5)
    utc = DAY.replace(tzinfo=timezone.utc)
    clock = JumpingClock(utc)
    daemon = _failing_daemon(layout, clock)
    daemon.tick(clock.now())
    assert queue.find(layout, item_id).meta.attempts == 1
    for clock.utc, clock.monotonic in ((utc + timedelta(days=1), 1.0),  # forward: not released at once
                                       (utc - timedelta(days=1), 29.0)):  # back: not held for a day
        assert daemon.tick(clock.now()) is False
        assert queue.find(layout, item_id).state is ItemState.PENDING and queue.find(layout, item_id).meta.attempts == 1
    clock.monotonic = 30.0
    daemon.tick(clock.now())
    assert queue.find(layout, item_id).meta.attempts == 2, "retried once its 30 s had passed"


def test_a_retry_time_left_by_an_earlier_run_waits_at_most_the_longest_delay(layout, tmp_path):
    layout.config_file.write_text(small_config(daemon={"retry_delay_seconds": 30}, spool={"max_attempts": 5}))
    item_id = enqueue_sample(layout, tmp_path, records=5)
    utc = DAY.replace(tzinfo=timezone.utc)
    first = _failing_daemon(layout, JumpingClock(utc))
    first.tick(first.clock.now())
    assert queue.find(layout, item_id).meta.not_before
    # Restarted after the clock was set back a day: the recorded time is a day away.
    clock = JumpingClock(utc - timedelta(days=1))
    again = _failing_daemon(layout, clock)
    assert again.tick(clock.now()) is False
    clock.monotonic = 3599.0
    assert again.tick(clock.now()) is False
    clock.monotonic = 3600.0
    again.tick(clock.now())
    assert queue.find(layout, item_id).meta.attempts == 2, "released after the longest delay, not a day"


def test_event_segments_past_keep_months_are_removed_once_a_utc_day(layout):
    from trainer.spool import events

    layout.config_file.write_text(small_config(events={"keep_months": 1}))
    for month in ("2031-02", "2031-03", "2031-04", "2031-05"):
        (layout.events_dir / f"{month}.jsonl").write_bytes(b"{}\n")
    daemon = daemon_on(layout)
    daemon.start()
    noon = datetime(2031, 5, 14, 12, 0, tzinfo=timezone.utc)
    daemon.tick(Now(utc=noon, local=noon, monotonic=0.0))
    assert events.months(layout) == ["2031-04", "2031-05"], "May, and one whole month before it"
    (layout.events_dir / "2031-03.jsonl").write_bytes(b"{}\n")
    daemon.tick(Now(utc=noon + timedelta(hours=11), local=noon, monotonic=1.0))
    assert "2031-03" in events.months(layout), "looked at once a day"
    daemon.tick(Now(utc=noon + timedelta(hours=12), local=noon, monotonic=2.0))
    assert events.months(layout) == ["2031-04", "2031-05"]


def test_event_segments_are_kept_forever_by_default(layout):
    from trainer.spool import events

    (layout.events_dir / "2001-01.jsonl").write_bytes(b"{}\n")
    daemon = daemon_on(layout)
    daemon.start()
    noon = datetime(2031, 5, 14, 12, 0, tzinfo=timezone.utc)
    daemon.tick(Now(utc=noon, local=noon, monotonic=0.0))
    assert "2001-01" in events.months(layout)


def test_the_engine_s_heartbeat_between_claim_and_first_step_reaches_the_watchdog(layout, tmp_path, monkeypatch):
    """Re-validating and surveying a large item take minutes with no step: the engine's
    heartbeat (called by the survey and the validation's reads) publishes the state, which
    pings systemd's watchdog."""
    import socket

    from trainer.daemon import reporter
    from trainer.daemon.notify import Notifier

    monkeypatch.setattr(reporter, "STATE_WRITE_INTERVAL_S", 0.0)  # every heartbeat publishes
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)

    def drain() -> list[bytes]:
        got = []
        while True:
            try:
                got.append(sock.recv(4096))
            except BlockingIOError:
                return got

    during: list[bytes] = []

    class Surveying(FakeEngine):
        def prepare(self, *args):
            drain()  # what came before the survey
            for _ in range(3):
                self.heartbeat()
            during.extend(drain())
            monkeypatch.setattr(reporter, "STATE_WRITE_INTERVAL_S", 1.0)  # no one reads on: do not fill the socket
            return super().prepare(*args)

    enqueue_sample(layout, tmp_path, records=5)
    daemon = Daemon(layout, load_config(layout.config_file), engine_factory=lambda root, config: Surveying(root, config),
                    notifier=Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"}))
    try:
        daemon.start()
        assert daemon.tick(at(DAY))
    finally:
        sock.close()
    assert sum(b"WATCHDOG=1" in message for message in during) == 3, during
