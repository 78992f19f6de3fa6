"""The inbox: only complete regular files are taken; nothing else is followed or opened."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.common import OTHERS_PYTHON, as_user, write_jsonl

from trainer.intake.inbox import InboxScanner, first_sight_credit, ingest
from trainer.spool import events, queue
from trainer.spool.origin import origin_record
from trainer.spool.sweep import sweep_tmp
from trainer.states import ItemState


def _scan(layout, settle=5.0, renamed=frozenset(), scanner=None, now_mono=None):
    scanner = scanner or InboxScanner(layout.inbox, settle)
    return scanner.ready(time.time(), time.monotonic() if now_mono is None else now_mono, renamed), scanner


def _old(path, seconds=60):
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_settled_file_is_taken_and_becomes_a_pending_item(layout, limits, chat_file):
    src = chat_file(records=3)
    dropped = layout.inbox / "a.jsonl"
    os.rename(src, dropped)
    _old(dropped)
    ready, _ = _scan(layout)
    assert ready == ["a.jsonl"]
    taken = ingest(layout, "a.jsonl", limits)
    assert taken.state is ItemState.PENDING
    assert not dropped.exists(), "the inbox file becomes the item (moved, not copied)"
    item = queue.find(layout, taken.item_id)
    assert item.meta.source == "inbox" and item.meta.records == 3 and item.meta.name == "a.jsonl"
    assert sorted(os.listdir(item.path)) == ["data.jsonl", "meta.json"]


def test_a_file_still_being_written_is_not_taken_until_it_settles(layout, tmp_path):
    path = layout.inbox / "growing.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "with open(sys.argv[1], 'w') as f:\n"
        "    for i in range(30):\n"
        "        f.write('{\"text\": \"line %d\"}\\n' % i); f.flush(); time.sleep(0.02)\n"
    ), str(path)])
    scanner = InboxScanner(layout.inbox, settle_s=0.5)
    try:
        seen_while_writing = []
        while writer.poll() is None:
            seen_while_writing += scanner.ready(time.time(), time.monotonic())
            time.sleep(0.01)
    finally:
        writer.wait(10)
    assert seen_while_writing == [], "taken while the writer was still writing"
    deadline = time.monotonic() + 5
    while not (ready := scanner.ready(time.time(), time.monotonic())):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ready == ["growing.jsonl"]


def test_a_renamed_file_is_taken_at_once(layout, chat_file):
    os.rename(chat_file(), layout.inbox / "fresh.jsonl")  # mtime is now: not settled by age
    ready, _ = _scan(layout)
    assert ready == []
    ready, _ = _scan(layout, renamed=frozenset({"fresh.jsonl"}))
    assert ready == ["fresh.jsonl"]


@pytest.mark.parametrize("name", [".hidden.jsonl", "copying.jsonl.tmp", "upload.part"])
def test_in_progress_names_are_never_taken(layout, chat_file, name):
    path = layout.inbox / name
    os.rename(chat_file(), path)
    _old(path)
    assert _scan(layout, renamed=frozenset({name}))[0] == []


def test_symlinks_fifos_and_directories_are_never_followed_or_opened(layout, tmp_path, limits):
    secret = write_jsonl(tmp_path / "outside.jsonl", [{"text": "secret"}])
    os.symlink(secret, layout.inbox / "link.jsonl")
    os.mkfifo(layout.inbox / "pipe.jsonl")
    (layout.inbox / "dir.jsonl").mkdir()
    for name in ("link.jsonl", "pipe.jsonl", "dir.jsonl"):
        os.utime(layout.inbox / name, (0, 0), follow_symlinks=False)
    assert _scan(layout, renamed=frozenset({"link.jsonl", "pipe.jsonl", "dir.jsonl"}))[0] == []
    # Even if asked to ingest one directly, nothing outside is read and nothing blocks.
    assert ingest(layout, "pipe.jsonl", limits) is None
    assert ingest(layout, "link.jsonl", limits) is None
    assert os.path.islink(layout.inbox / "link.jsonl") and secret.read_text()
    assert os.path.exists(layout.inbox / "pipe.jsonl")
    assert queue.counts(layout)["pending"] == 0 and os.listdir(layout.tmp) == []


def test_an_invalid_inbox_file_is_kept_as_a_failed_item_with_its_reasons(layout, limits, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"messages": "nope"}])
    os.rename(bad, layout.inbox / "bad.jsonl")
    taken = ingest(layout, "bad.jsonl", limits)
    assert taken.state is ItemState.FAILED
    item = queue.find(layout, taken.item_id)
    assert item.meta.errors[0].kind == "invalid" and "bad.jsonl:2" in item.meta.errors[0].message
    assert item.data_path.read_bytes() == (
        b'{"text":"fine"}\n{"messages":"nope"}\n'), "the user's bytes are kept"
    assert [e["event"] for e in events.read(layout).events] == ["rejected"]


def test_an_empty_inbox_file_fails_with_a_reason(layout, limits):
    (layout.inbox / "empty.jsonl").write_bytes(b"")
    taken = ingest(layout, "empty.jsonl", limits)
    assert taken.state is ItemState.FAILED
    assert "empty" in queue.find(layout, taken.item_id).meta.errors[0].message


def _as_daemon_user():
    """argv prefix running a command as an unprivileged user, so permissions really apply."""
    import pwd
    import shutil

    if os.geteuid() != 0:
        return [], os.geteuid()
    if shutil.which("setpriv") is None:
        pytest.skip("root reads any file, and setpriv is missing to drop to another user")
    uid = pwd.getpwnam("nobody").pw_uid
    return as_user(uid), uid


def test_an_unreadable_inbox_file_fails_with_the_fix(open_layout, chat_file):
    layout = open_layout
    prefix, uid = _as_daemon_user()
    path = layout.inbox / "private.jsonl"
    os.rename(chat_file(), path)
    if prefix:  # the daemon's user owns the base dir; the dropped file is someone else's
        for p in [layout.root, *layout.root.rglob("*")]:
            os.chown(p, uid, uid)
        os.chown(path, 0, 0)
    os.chmod(path, 0o600 if prefix else 0)
    code = ("import sys\nfrom pathlib import Path\nfrom trainer.config import Config\n"
            "from trainer.intake.inbox import ingest\nfrom trainer.spool.layout import open_base\n"
            "taken = ingest(open_base(Path(sys.argv[1])), 'private.jsonl', Config().spool)\n"
            "print(taken.item_id, taken.state.value)\n")
    result = subprocess.run([*prefix, OTHERS_PYTHON(), "-c", code, str(layout.root)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    item_id, state = result.stdout.split()
    assert state == "failed"
    item = queue.find(layout, item_id)
    assert "permission denied" in item.meta.errors[0].message and "chmod g+r" in item.meta.errors[0].message
    assert item.data_path.exists(), "the file is kept, not dropped"


DAY = 86_400.0


class MovedClock:
    """The wall clock a daemon reads, moved by whole jumps; writes get their mtime from it, as
    a kernel on that clock would stamp them (the test itself stays on the real clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def wall(self) -> float:
        return time.time() + self.offset

    def write(self, path, data: bytes) -> None:
        with open(path, "ab") as fh:
            fh.write(data)
        stamp = int(self.wall() * 1e9)
        os.utime(path, ns=(stamp, stamp))


def test_the_first_sight_credit_is_the_mtime_age_never_from_the_future_nor_over_the_settle_period():
    now = 1_000_000_000.0
    assert first_sight_credit(int((now - 2) * 1e9), now, settle_s=5) == pytest.approx(2)
    assert first_sight_credit(int((now - 60) * 1e9), now, settle_s=5) == 5
    assert first_sight_credit(int((now + DAY) * 1e9), now, settle_s=5) == 0, "the clock jumped back"


def test_a_forward_jump_during_a_pause_in_a_copy_does_not_take_the_half_written_file(layout):
    clock, path = MovedClock(), layout.inbox / "slow.jsonl"
    scanner = InboxScanner(layout.inbox, settle_s=5)
    t0 = time.monotonic()
    assert scanner.ready(clock.wall(), t0) == [], "the daemon starts with an empty inbox"
    clock.write(path, b'{"text": "chunk 1"}\n{"te')
    assert scanner.ready(clock.wall(), t0 + 1) == []
    clock.offset += DAY  # during the pause: every mtime now looks a day old
    assert scanner.ready(clock.wall(), t0 + 2) == [], "taken half-written after a forward jump"
    assert scanner.ready(clock.wall(), t0 + 5.9) == []
    clock.write(path, b'xt": "chunk 2"}\n')
    assert scanner.ready(clock.wall(), t0 + 6) == []
    assert scanner.ready(clock.wall(), t0 + 10.9) == [], "changed at t0+6: settles at t0+11"
    assert scanner.ready(clock.wall(), t0 + 11) == ["slow.jsonl"]


def test_a_backward_jump_neither_strands_a_finished_file_nor_hides_a_change(layout):
    clock = MovedClock()
    scanner = InboxScanner(layout.inbox, settle_s=5)
    t0 = time.monotonic()
    assert scanner.ready(clock.wall(), t0) == []
    clock.write(layout.inbox / "done.jsonl", b'{"text": "whole"}\n')
    clock.write(layout.inbox / "across.jsonl", b'{"text": "first"}\n')
    assert scanner.ready(clock.wall(), t0 + 1) == []
    clock.offset -= DAY  # both mtimes are now a day in the future
    clock.write(layout.inbox / "across.jsonl", b'{"text": "after the jump"}\n')  # its mtime goes back
    assert scanner.ready(clock.wall(), t0 + 2) == []
    assert scanner.ready(clock.wall(), t0 + 6) == ["done.jsonl"], "not stranded until the clock catches up"
    assert scanner.ready(clock.wall(), t0 + 6.9) == ["done.jsonl"]
    assert set(scanner.ready(clock.wall(), t0 + 7)) == {"done.jsonl", "across.jsonl"}


def test_a_jump_between_first_sight_and_the_second_scan_does_not_take_a_copy_in_progress(layout):
    clock = MovedClock()
    old, changed, copying = (layout.inbox / name for name in ("old.jsonl", "changed.jsonl", "copying.jsonl"))
    clock.write(old, b'{"text": "sat there while the daemon was down"}\n')
    clock.write(changed, b'{"text": "old, then appended to"}\n')
    for path in (old, changed):
        os.utime(path, (clock.wall() - 60, clock.wall() - 60))
    clock.write(copying, b'{"text": "half')
    os.utime(copying, (clock.wall() - 1, clock.wall() - 1))  # last written a second before the start
    scanner = InboxScanner(layout.inbox, settle_s=5)
    t0 = time.monotonic()
    assert set(scanner.ready(clock.wall(), t0)) == {"old.jsonl", "changed.jsonl"}, "there at the start: no wait"
    os.unlink(old)  # taken
    clock.offset += DAY
    clock.write(changed, b'{"text": "more"}\n')  # changed after the start: timed from that scan
    assert scanner.ready(clock.wall(), t0 + 1) == [], "the wall clock is read at the first scan only"
    assert scanner.ready(clock.wall(), t0 + 3.5) == []
    assert scanner.ready(clock.wall(), t0 + 4) == ["copying.jsonl"], "its age at first sight counts"
    assert scanner.ready(clock.wall(), t0 + 5.9) == ["copying.jsonl"]
    assert scanner.ready(clock.wall(), t0 + 6) == ["copying.jsonl", "changed.jsonl"]


def test_a_changed_file_restarts_its_settle_period(layout):
    path = layout.inbox / "x.jsonl"
    path.write_text('{"text": "a"}\n')
    scanner = InboxScanner(layout.inbox, settle_s=5)
    t0 = time.monotonic()
    assert scanner.ready(time.time(), t0) == []
    with open(path, "a") as fh:
        fh.write('{"text": "b"}\n')
    assert scanner.ready(time.time(), t0 + 4) == []
    assert scanner.ready(time.time(), t0 + 8) == [], "changed at t0+4: settles at t0+9"
    assert scanner.ready(time.time(), t0 + 9.5) == ["x.jsonl"]


def test_a_crash_mid_ingest_gives_the_file_back_to_the_inbox(layout, limits, chat_file):
    """Kill -9 a process right after it moved an inbox file into staging."""
    src = chat_file(records=2)
    original = src.read_bytes()
    os.rename(src, layout.inbox / "precious.jsonl")
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "import trainer.intake.inbox as inbox\n"
        "from trainer.spool.layout import open_base\n"
        "from trainer.config import Config\n"
        "def die(*a, **k): os.kill(os.getpid(), 9)\n"
        "inbox._validate_staged = die\n"
        "inbox.ingest(open_base(Path(sys.argv[1])), 'precious.jsonl', Config().spool)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(layout.root)])
    assert proc.returncode == -9
    assert not (layout.inbox / "precious.jsonl").exists()
    assert len(os.listdir(layout.tmp)) == 1, "the file sits in staging"
    report = sweep_tmp(layout, min_age_s=0)
    assert report.restored == ["precious.jsonl"]
    assert (layout.inbox / "precious.jsonl").read_bytes() == original
    assert os.listdir(layout.tmp) == []


def test_sweep_leaves_a_live_writers_staging_alone(layout, tmp_path):
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from trainer.spool.fsutil import StagingDir\n"
        "s = StagingDir(Path(sys.argv[1]), 'live')\n"
        "print('staged', flush=True)\n"
        "time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(layout.tmp)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "staged"
        (layout.tmp / "debris.tmp").write_text("x")
        (layout.tmp / "dead").mkdir()
        sweep_tmp(layout, min_age_s=0)
        assert sorted(os.listdir(layout.tmp)) == ["live"], "debris removed, the live writer's staging kept"
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()


def test_the_sweep_gives_back_a_half_taken_file_whose_staging_looks_written_in_the_future(layout):
    """The daemon crashed mid-intake, then the clock was set back a day: its staging dir is
    dead, whatever its mtime says."""
    staging = layout.tmp / "20261128T000000.000000Z-00000001"
    staging.mkdir()
    (staging / "origin.json").write_bytes(origin_record("precious.jsonl"))
    (staging / "data.jsonl").write_bytes(b'{"text": "mine"}\n')
    ahead = time.time() + DAY
    for path in (staging / "origin.json", staging / "data.jsonl", staging):
        os.utime(path, (ahead, ahead))
    report = sweep_tmp(layout, min_age_s=0.2)
    assert report.restored == ["precious.jsonl"] and os.listdir(layout.tmp) == []
    assert (layout.inbox / "precious.jsonl").read_bytes() == b'{"text": "mine"}\n'


def test_the_sweep_leaves_what_changes_or_appears_while_it_watches_however_old_it_looks(layout):
    """After a forward jump a live writer's files look a day old: only watching them tells."""
    growing, dead = layout.tmp / "growing.tmp", layout.tmp / "dead.tmp"
    for path in (growing, dead):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - DAY, time.time() - DAY))

    def a_writer_at_work(seconds):
        time.sleep(seconds)
        with open(growing, "ab") as fh:
            fh.write(b"more")
        (layout.tmp / "new.tmp").write_bytes(b"y")
        for path in (growing, layout.tmp / "new.tmp"):
            os.utime(path, (time.time() - DAY, time.time() - DAY))

    sweep_tmp(layout, min_age_s=0.1, sleep=a_writer_at_work)
    assert sorted(os.listdir(layout.tmp)) == ["growing.tmp", "new.tmp"], "only the dead one removed"
    assert growing.read_bytes() == b"xmore"


def test_restoring_never_overwrites_a_new_file_of_the_same_name(layout, limits, tmp_path):
    staging = layout.tmp / "20261128T000000.000000Z-00000000"
    staging.mkdir()
    (staging / "origin.json").write_bytes(origin_record("a.jsonl"))
    (staging / "data.jsonl").write_bytes(b"old\n")
    (layout.inbox / "a.jsonl").write_bytes(b"new\n")
    report = sweep_tmp(layout, min_age_s=0)
    assert report.restored == ["a.restored-1.jsonl"]
    assert (layout.inbox / "a.jsonl").read_bytes() == b"new\n"
    assert (layout.inbox / "a.restored-1.jsonl").read_bytes() == b"old\n"


def test_a_crafted_origin_cannot_move_data_outside_the_inbox(layout, tmp_path):
    staging = layout.tmp / "x"
    staging.mkdir()
    (staging / "origin.json").write_bytes(origin_record("../../escaped"))
    (staging / "data.jsonl").write_bytes(b"data\n")
    sweep_tmp(layout, min_age_s=0)
    assert not (layout.root.parent / "escaped").exists()
    assert os.listdir(layout.inbox) == []
