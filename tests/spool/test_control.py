"""The control protocol, the daemon lock and what status concludes from them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from trainer import clock
from trainer.spool import control
from trainer.spool.control import Action, Requests, decide, liveness
from trainer.spool.lock import AlreadyRunning, DaemonLock, lock_holder
from trainer.spool.status import eta_seconds
from trainer.states import Liveness


def test_stop_beats_skip_beats_pause():
    pause, skip, stop = {"reason": None}, {"item": "A"}, {}
    assert decide(Requests(pause=pause, skip=skip, stop=stop), "A") is Action.STOP
    assert decide(Requests(pause=pause, skip=skip), "A") is Action.SKIP
    assert decide(Requests(pause=pause), "A") is Action.PAUSE
    assert decide(Requests(), "A") is Action.NONE


def test_a_skip_for_another_item_never_hits_the_current_one():
    assert decide(Requests(skip={"item": "old"}), "new") is Action.NONE
    assert decide(Requests(skip={"item": "old"}), None) is Action.NONE


def test_requests_round_trip_through_the_control_dir(layout):
    assert control.read_requests(layout) == Requests()
    control.send_pause(layout, "maintenance")
    control.send_skip(layout, "X", "bad data")
    control.send_stop(layout)
    found = control.read_requests(layout)
    assert found.pause["reason"] == "maintenance" and found.skip["item"] == "X" and found.stop is not None
    assert control.clear_skip(layout) and control.clear_stop(layout)
    assert control.send_resume(layout) is True
    assert control.send_resume(layout) is False
    assert control.read_requests(layout) == Requests()


def test_a_damaged_request_file_still_counts_as_the_request(layout):
    (layout.control / "pause.json").write_bytes(b"\xff\xfe{{")
    assert control.read_requests(layout).pause == {}
    assert decide(control.read_requests(layout), None) is Action.PAUSE


def _beat(at: clock.Reading) -> dict:
    """A state record as write_state publishes it, with its heartbeat taken ``at``."""
    return {**control.daemon_state("training", pid=1, started_at=at.wall, now=at.wall),
            "heartbeat_clock": clock.stamp(at)}


HERE = "boot-a time:[1]"
WALL = datetime(2031, 5, 14, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def test_liveness_needs_the_lock_and_a_fresh_heartbeat():
    beat = clock.Reading(WALL, 1000.0, HERE)
    now = clock.Reading(WALL + timedelta(seconds=2), 1002.0, HERE)
    later = clock.Reading(WALL + timedelta(seconds=500), 1500.0, HERE)
    assert liveness(None, _beat(beat), now, 120) is Liveness.NOT_RUNNING, "a dead daemon is never 'training'"
    assert liveness(42, _beat(beat), now, 120) is Liveness.RUNNING
    assert liveness(42, _beat(beat), later, 120) is Liveness.UNRESPONSIVE
    assert liveness(42, None, now, 120) is Liveness.UNKNOWN, "no heartbeat to read is not a hang"


def test_a_wall_clock_jump_neither_makes_a_healthy_daemon_look_hung_nor_a_hung_one_look_alive():
    beat = _beat(clock.Reading(WALL, 1000.0, HERE))
    jumped_forward = clock.Reading(WALL + DAY, 1002.0, HERE)  # 2 s later, the clock a day ahead
    assert liveness(42, beat, jumped_forward, 120) is Liveness.RUNNING
    assert control.heartbeat_age(beat, jumped_forward) == 2
    hung_then_jumped_back = clock.Reading(WALL - DAY, 1500.0, HERE)  # 500 s later, the clock a day behind
    assert liveness(42, beat, hung_then_jumped_back, 120) is Liveness.UNRESPONSIVE


def test_a_heartbeat_from_another_boot_or_namespace_is_aged_on_the_wall_clock():
    beat = _beat(clock.Reading(WALL, 1000.0, HERE))
    for elsewhere in ("boot-b time:[1]", "boot-a time:[2]", None):
        assert control.heartbeat_age(beat, clock.Reading(WALL + timedelta(seconds=30), 5.0, elsewhere)) == 30
    # On that fallback a heartbeat from the future (the clock jumped back) counts as fresh:
    # the lock already proves a live process.
    assert liveness(42, beat, clock.Reading(WALL - DAY, 5.0, None), 120) is Liveness.RUNNING
    older = control.daemon_state("training", pid=1, started_at=WALL, now=WALL)  # no monotonic stamp
    assert control.heartbeat_age(older, clock.Reading(WALL + timedelta(seconds=7), 1e6, HERE)) == 7


@pytest.mark.parametrize("stamp", [
    {"domain": HERE, "monotonic": 2000.0},  # after "now": never from this clock
    {"domain": HERE, "monotonic": "1000"}, {"domain": HERE, "monotonic": True},
    {"domain": HERE, "monotonic": float("nan")}, {"domain": HERE}, "garbage", None,
])
def test_a_damaged_monotonic_stamp_falls_back_to_the_wall_clock(stamp):
    record = {**control.daemon_state("training", pid=1, started_at=WALL, now=WALL), "heartbeat_clock": stamp}
    assert control.heartbeat_age(record, clock.Reading(WALL + timedelta(seconds=3), 1500.0, HERE)) == 3


def test_the_published_state_carries_this_boots_monotonic_clock(layout):
    before = clock.read()
    control.write_state(layout, control.daemon_state("idle", pid=1, started_at=before.wall, now=before.wall))
    state, problem = control.read_state(layout)
    assert problem is None and state["heartbeat_clock"]["domain"] == clock.domain()
    age = control.heartbeat_age(state, clock.read())
    assert age is not None and 0 <= age <= clock.read().monotonic - before.monotonic


def test_second_daemon_lock_is_refused_naming_the_holder(layout):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pathlib import Path\nfrom trainer.spool.layout import open_base\n"
        "from trainer.spool.lock import DaemonLock\n"
        "DaemonLock(open_base(Path(sys.argv[1]))).acquire(); print('locked', flush=True); time.sleep(60)"
    ), str(layout.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(layout) == holder.pid
        with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}"):
            DaemonLock(layout).acquire(attempts=3, pause_s=0.01)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # The kernel drops the lock with the process: no stale pid file to clean.
    assert lock_holder(layout) is None
    lock = DaemonLock(layout)
    lock.acquire()
    assert lock_holder(layout) == os.getpid()
    lock.release()


def test_a_status_probe_never_makes_a_starting_daemon_fail(layout):
    """trainctl's probe holds a shared lock for an instant; acquire retries past it."""
    import fcntl

    fd = os.open(layout.daemon_lock, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)
    releaser = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    lock = DaemonLock(layout)
    try:
        import threading

        threading.Timer(0.2, os.close, args=(fd,)).start()
        lock.acquire(attempts=40, pause_s=0.05)
    finally:
        releaser.wait()
        lock.release()


def test_state_file_garbage_is_reported_not_raised(layout):
    layout.daemon_state.write_bytes(b"\x00\x01 not json")
    state, problem = control.read_state(layout)
    assert state is None and "damaged: not JSON" in problem


def test_eta_from_the_step_rate():
    assert eta_seconds({"step": 10, "total": 110, "seconds_per_step": 0.5}) == 50
    assert eta_seconds({"step": 10, "total": 110}) is None
    assert eta_seconds({"step": "x", "total": 110, "seconds_per_step": 1}) is None


def test_a_fifo_or_a_link_to_a_device_in_place_of_a_control_file_neither_hangs_nor_floods(layout):
    # Any group member can put anything in control/ and run/: the daemon and trainctl read
    # these files on every loop; a fifo would block them, /dev/zero would fill their memory.
    os.mkfifo(layout.control / "pause.json")
    os.symlink("/dev/zero", layout.control / "skip.json")
    requests = control.read_requests(layout)  # returns at once
    assert requests.pause == {} and requests.skip == {}  # present: counted, without details
    os.mkfifo(layout.daemon_state)
    state, problem = control.read_state(layout)
    assert state is None and "not a regular file" in problem


def test_the_event_log_replaced_by_a_symlink_is_not_appended_through(layout, tmp_path):
    from trainer.eventkinds import Event
    from trainer.spool import events
    from trainer.timefmt import utc_now

    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    segment = layout.events_dir / events.segment_name(events.month_of(utc_now()))
    segment.symlink_to(victim)
    with pytest.raises(OSError):
        events.append(layout, Event.CLAIMED, None)
    assert victim.read_bytes() == b""
    segment.unlink()
    layout.events_dir.rmdir()
    layout.events_dir.symlink_to(tmp_path)  # the directory itself
    with pytest.raises(OSError):
        events.append(layout, Event.CLAIMED, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "victim"]
