"""The control protocol, the daemon lock and what status concludes from them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from trainer.spool import control
from trainer.spool.control import Action, Requests, decide, liveness
from trainer.spool.lock import AlreadyRunning, DaemonLock, lock_holder
from trainer.spool.status import eta_seconds
from trainer.states import Liveness
from trainer.timefmt import utc_now


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


def test_liveness_needs_the_lock_and_a_fresh_heartbeat():
    now = utc_now()
    fresh = control.daemon_state("training", pid=1, started_at=now, now=now - timedelta(seconds=2))
    stale = control.daemon_state("training", pid=1, started_at=now, now=now - timedelta(seconds=500))
    future = control.daemon_state("training", pid=1, started_at=now, now=now + timedelta(hours=1))
    assert liveness(None, fresh, now, 120) is Liveness.NOT_RUNNING, "a dead daemon is never 'training'"
    assert liveness(42, fresh, now, 120) is Liveness.RUNNING
    assert liveness(42, stale, now, 120) is Liveness.UNRESPONSIVE
    assert liveness(42, None, now, 120) is Liveness.UNRESPONSIVE
    assert liveness(42, future, now, 120) is Liveness.RUNNING, "a clock jump back is not a hang"


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
    assert state is None and "unreadable" in problem


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
    from trainer.spool import events
    from trainer.states import Event

    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    layout.events.unlink()
    layout.events.symlink_to(victim)
    with pytest.raises(OSError):
        events.append(layout, Event.CLAIMED, None)
    assert victim.read_bytes() == b""
