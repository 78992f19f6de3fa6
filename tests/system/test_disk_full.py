"""A disk with no room left (0 bytes, 0 inodes) or turned read-only: the daemon blocks, nothing breaks.

The real daemon on a real tmpfs, taken away at each kind of moment, against a straight run
(the quick version of bench/chaos_disk.py); the spool's writes on a full tmpfs one by one;
`trainctl status` with a damaged, empty or fifo state file under a live daemon, and with a
read-only base dir. Needs root for the mounts (skipped with the reason otherwise).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers.common import REPO, trainctl
from helpers.daemon_proc import DaemonProcess, enqueue_sample, small_config

from trainer.config import default_config_toml
from trainer.errors import DiskUnwritable
from trainer.eventkinds import Event
from trainer.spool import control, events, metrics, queue
from trainer.spool.fsutil import append_line, disk_refusal
from trainer.spool.layout import init_base
from trainer.spool.lock import DaemonLock
from trainer.states import ItemState, Priority
from trainer.timefmt import utc_now

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to mount a tmpfs)")


def _fill(mount: Path) -> Path:
    """Take every byte left, as dd if=/dev/zero would (until ENOSPC)."""
    filler = mount / "filler"
    done = subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, text=True)
    assert "No space left" in done.stderr, done.stderr
    return filler


# --- the daemon, at every kind of moment -------------------------------------------------

QUICK = [("bytes", "step"), ("inodes", "checkpoint"), ("bytes", "snapshot"), ("readonly", "step"),
         ("bytes", "consolidation"), ("bytes", "intake"), ("bytes", "enqueue")]


@needs_root
def test_a_disk_taken_away_at_each_kind_of_moment_blocks_the_daemon_which_loses_nothing(tmp_path, demo_model):
    sys.path.insert(0, str(REPO / "bench"))
    import chaos_disk

    report = chaos_disk.experiment(tmp_path, demo_model, items=10, records=80, fills=len(QUICK), seed=3, cycle=QUICK)
    # Each fill blocked the daemon (STATUS=blocked, watchdog pings on), no step trained while
    # blocked, it resumed by itself; no error, attempt, failure or torn line; final weights,
    # optimizer and RNG state identical to the straight run: see chaos_disk.check.
    assert report["problems"] == [], report
    assert report["fills"] == len(QUICK), report
    assert "idle" not in report["landed"], "each fill met the daemon (or trainctl) with something to write"
    assert set(report["fills_by_kind"]) == {"bytes", "inodes", "readonly"}
    assert report["status_while_blocked"].keys() <= {"running", "unknown"}
    assert report["longest_watchdog_gap_while_blocked_s"] < 5, "pinged every heartbeat while blocked"


@needs_root
def test_the_model_on_another_disk_that_is_full_and_read_only_does_not_stop_training(tmp_path, demo_model,
                                                                                    small_tmpfs):
    # The daemon only reads the model it starts from: every write goes under the base dir.
    model_disk = small_tmpfs("16m")
    shutil.copytree(demo_model, model_disk / "model")
    _fill(model_disk)
    subprocess.run(["mount", "-o", "remount,ro", str(model_disk)], check=True)
    layout, _ = init_base(tmp_path / "base", default_config_toml())
    layout.config_file.write_text(small_config(model={"path": str(model_disk / "model")},
                                               daemon={"consolidate_when_idle": True}))
    item_id = enqueue_sample(layout, tmp_path, records=30)
    daemon = DaemonProcess(layout, "--exit-when-idle")
    try:
        assert daemon.finish(120) == 0, daemon.output()
    finally:
        daemon.kill()
    assert queue.find(layout, item_id).state is ItemState.DONE
    assert (layout.root / "models" / "v001" / "config.json").exists(), "a version, its files read from there"


@needs_root
def test_a_stop_while_blocked_on_a_full_disk_puts_the_item_back_without_an_attempt(tmp_path, demo_model,
                                                                                   small_tmpfs):
    mount = small_tmpfs("160m")
    layout, _ = init_base(mount / "base", default_config_toml())
    layout.config_file.write_text(small_config(daemon={"disk_check_seconds": 0.5}))
    shutil.copytree(demo_model, layout.root / "models" / "base")
    item_id = enqueue_sample(layout, tmp_path, records=600)
    daemon = DaemonProcess(layout)
    try:
        daemon.wait_for(lambda: daemon.step() >= 3, what="training")
        filler = _fill(mount)
        daemon.wait_for(lambda: daemon.state().get("state") == "blocked", what="blocked on the full disk")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish(60) == 0, daemon.output()
    finally:
        daemon.kill()
    item = queue.find(layout, item_id)
    assert item.state is ItemState.PENDING and item.meta.attempts == 0 and not item.meta.errors
    # Its "requeued" line is in the log (if the log's last page had room) or, never written,
    # in the journal; no torn line either way.
    log = events.read(layout)
    requeued = [e for e in log.events if e["event"] == "requeued" and e["id"] == item_id]
    assert [e["counted"] for e in requeued] == [False] or "event log: not recorded" in daemon.output()
    assert log.unreadable_lines == 0
    filler.unlink()


# --- the spool's writes on a full disk -----------------------------------------------------

@needs_root
def test_a_log_line_that_only_partly_fits_is_cut_back_and_the_next_one_starts_whole(small_tmpfs):
    mount = small_tmpfs("64k")
    log = mount / "log.jsonl"
    line = orjson.dumps({"step": 1, "pad": "x" * 700}) + b"\n"
    with pytest.raises(OSError) as caught:
        while True:
            append_line(log, line)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(log)
    assert log.read_bytes() == line * (log.stat().st_size // len(line)), "whole lines only"
    # A line a crash left torn is ended before the next, so only it is unreadable.
    os.truncate(log, 0)
    log.write_bytes(line + line[:100])
    append_line(log, orjson.dumps({"step": 2}) + b"\n")
    assert [r[:9] for r in log.read_bytes().splitlines()] == [b'{"step":1', b'{"step":1', b'{"step":2'], \
        "the whole line, the torn one ended, the new one on its own"


@needs_root
def test_an_event_the_full_disk_refuses_waits_and_is_written_once_there_is_room(small_tmpfs):
    layout, _ = init_base(small_tmpfs("4m") / "base", default_config_toml())
    filler = _fill(layout.root.parent)
    for n in range(20):  # more than the log's last page holds
        events.append(layout, Event.CLAIMED, None, n=n, pad="x" * 400)
    waiting = len(events.waiting(layout))
    assert waiting > 0, "the change stands; its line waits"
    assert events.read(layout).unreadable_lines == 0
    filler.unlink()
    assert events.flush(layout) == 0
    log = events.read(layout)
    assert [e["n"] for e in log.events] == list(range(20)) and log.unreadable_lines == 0


@needs_root
def test_the_state_file_is_still_written_on_a_disk_with_no_byte_free(small_tmpfs):
    layout, _ = init_base(small_tmpfs("4m") / "base", default_config_toml())
    now = utc_now()
    control.write_state(layout, control.daemon_state("training", pid=7, started_at=now, now=now))
    _fill(layout.root.parent)
    later = control.daemon_state("blocked", pid=7, started_at=now, now=now, reason="disk: no space left writing x")
    control.write_state(layout, later)  # no room for a new copy: written over the old one in place
    state, problem = control.read_state(layout)
    assert problem is None and state["state"] == "blocked" and state["heartbeat_at"] == later["heartbeat_at"]


@needs_root
def test_enqueue_on_a_full_disk_queues_nothing_says_what_to_do_and_leaves_nothing(small_tmpfs, chat_file):
    layout, _ = init_base(small_tmpfs("4m") / "base", default_config_toml())
    filler = _fill(layout.root.parent)
    result = trainctl(layout.root, "enqueue", str(chat_file(200)), str(chat_file(200)))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "no space left writing" in result.stderr and "free some space" in result.stderr
    assert queue.counts(layout)["pending"] == 0 and os.listdir(layout.tmp) == []
    assert events.read(layout).events == []
    filler.unlink()
    assert trainctl(layout.root, "enqueue", str(chat_file(200))).returncode == 0


def test_a_state_change_whose_move_fails_keeps_the_previous_metadata(layout, chat_file, limits):
    from trainer.intake.enqueue import enqueue

    item_id = enqueue(layout, chat_file(), limits=limits).id
    queue.claim_next(layout, utc_now())
    before = queue.find(layout, item_id).meta
    os.rmdir(layout.pending(Priority.NORMAL))  # the move has nowhere to go
    try:
        with pytest.raises(FileNotFoundError):
            queue.requeue(layout, item_id, reason="interrupted")
    finally:
        os.mkdir(layout.pending(Priority.NORMAL))
    item = queue.find(layout, item_id)
    assert item.state is ItemState.ACTIVE and item.meta == before, "one state, and its metadata"
    assert not (item.path / queue.PREVIOUS_META).exists()
    requeued = queue.requeue(layout, item_id, reason="interrupted")  # the same change, made again
    assert requeued.meta.attempts == before.attempts + 1


def test_library_errors_that_carry_only_the_message_are_recognised_as_the_disk():
    torch_like = RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                              "No space left on device")
    assert isinstance(disk_refusal(torch_like), DiskUnwritable)
    assert disk_refusal(OSError(errno.EROFS, "Read-only file system", "/x")).errno == errno.EROFS
    assert disk_refusal(RuntimeError("shape mismatch")) is None
    assert disk_refusal(OSError(errno.EIO, "Input/output error")) is None, "an I/O error is not a full disk"


def test_a_torn_metrics_line_is_skipped_and_counted(layout):
    path = metrics.path(layout, "item")
    path.parent.mkdir()
    path.write_bytes(b'{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    log = metrics.read(layout, "item")
    assert [r["step"] for r in log.steps] == [1, 3] and log.unreadable_lines == 1


# --- trainctl status ------------------------------------------------------------------------

LONG_HEARTBEAT = small_config(daemon={"heartbeat_seconds": 60})  # idle: the state file left alone


@pytest.mark.parametrize("damage, said", [
    (lambda path: path.write_bytes(b'{"schema": 1, "state": "idle", "heartb'), "damaged: not JSON"),
    (lambda path: path.write_bytes(b""), "damaged: empty"),
    (lambda path: (path.unlink(), os.mkfifo(path)), "not a regular file"),
])
def test_status_with_a_damaged_state_file_under_a_live_daemon_says_what_is_wrong(layout, fake_daemon, damage, said):
    layout.config_file.write_text(LONG_HEARTBEAT)
    daemon = fake_daemon(layout.root, "--consume")
    _until_idle_heartbeat_settles(layout)
    damage(layout.daemon_state)
    result = trainctl(layout.root, "status")
    assert result.returncode == 0, "a daemon holds the lock: it runs"
    line = result.stdout.splitlines()[0]
    assert f"pid {daemon.pid} holds the lock" in line and "state unknown" in line, line
    assert str(layout.daemon_state) in line and said in line, line
    for wrong in ("UNRESPONSIVE", "never", "None"):
        assert wrong not in result.stdout
    status = orjson.loads(trainctl(layout.root, "status", "--json").stdout)
    assert status["daemon"]["liveness"] == "unknown" and said in status["daemon"]["state_problem"]


def _until_idle_heartbeat_settles(layout) -> None:
    """Until the daemon is in its (60 s) idle wait: the same heartbeat read twice, apart."""
    deadline = time.monotonic() + 60
    last = None
    while True:
        state, _ = control.read_state(layout)
        beat = (state or {}).get("heartbeat_at")
        if beat is not None and beat == last and state.get("state") == "idle":
            return
        assert time.monotonic() < deadline, "the daemon never settled into its idle wait"
        last = beat
        time.sleep(0.3)


@needs_root
def test_status_of_a_daemon_whose_disk_went_read_only_is_unknown_not_unresponsive(small_tmpfs, fake_daemon):
    layout, _ = init_base(small_tmpfs("8m") / "base", default_config_toml())
    layout.config_file.write_text(small_config(daemon={"stale_after_seconds": 1}))
    fake_daemon(layout.root, "--no-heartbeat")  # a heartbeat that goes stale, as on a read-only disk
    deadline = time.monotonic() + 60
    while "UNRESPONSIVE" not in trainctl(layout.root, "status").stdout:
        assert time.monotonic() < deadline, "a stale heartbeat on a writable disk is a hang"
        time.sleep(0.2)
    # remount,ro: possible under a live lock holder (its lock is held on a read-only descriptor)
    subprocess.run(["mount", "-o", "remount,ro", str(layout.root.parent)], check=True)
    try:
        result = trainctl(layout.root, "status")
        status = orjson.loads(trainctl(layout.root, "status", "--json").stdout)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(layout.root.parent)], check=True)
    assert result.returncode == 0 and "UNRESPONSIVE" not in result.stdout
    assert "state unknown" in result.stdout and "read-only" in result.stdout
    assert status["daemon"]["liveness"] == "unknown" and status["disk"]["read_only"] is True


@needs_root
def test_the_daemon_lock_leaves_the_disk_free_to_be_remounted_read_only(small_tmpfs):
    layout, _ = init_base(small_tmpfs("4m") / "base", default_config_toml())
    lock = DaemonLock(layout)
    lock.acquire()
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(layout.root.parent)], check=True)
        subprocess.run(["mount", "-o", "remount,rw", str(layout.root.parent)], check=True)
    finally:
        lock.release()
