"""trainctl logs over the base dir's log file: where it looks, -n across rotations, -f across a
rotation, and what it says where there is nothing. (A real daemon writing the file:
tests/daemon/test_observability.py; the journal: tests/system/test_systemd.py.)"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import orjson
from helpers.common import REPO, trainctl

from ctl.commands.logs import Source, source
from trainer.daemon.logs import LogFile
from trainer.spool import logfile

ID = "20261130T010613.759528Z-36166aae"


def line(n: int, text: str = "") -> str:
    return f"2026-11-30 01:{n // 60:02d}:{n % 60:02d}+0000 INFO    trainer.daemon: line {n}{text}"


def test_where_to_look_is_what_the_daemon_said_else_the_file_else_nothing():
    assert source({"journal": True, "unit": "trainer@1.service"}, False, None) == Source("trainer@1.service")
    assert source({"journal": True, "unit": None}, False, None) == Source("trainer.service")
    assert source({"journal": False, "file": "logs/trainer.log"}, False, None) == Source(None)
    assert source(None, True, None) == Source(None)  # a file, from a daemon before run/log.json
    assert source({"journal": False}, True, "trainer@2") == Source("trainer@2")  # --unit forces the journal
    assert source(None, False, None) is None


def test_no_daemon_log_yet_says_where_it_looked_and_what_to_do(layout):
    shown = trainctl(layout.root, "logs")
    assert shown.returncode == 1 and shown.stdout == ""
    assert str(layout.log_target) in shown.stderr and str(layout.log_file) in shown.stderr
    assert f"trainer run --base-dir {layout.root}" in shown.stderr


def test_the_log_file_rotates_at_its_size_and_logs_reads_across_the_rotations(layout):
    layout.logs_dir.mkdir()
    logger = logging.getLogger("test.rotation")
    logger.propagate = False
    handler = LogFile(layout.log_file, max_bytes=2000, backups=3)
    logger.addHandler(handler)
    try:
        for n in range(200):
            logger.warning("record %d", n)
    finally:
        logger.removeHandler(handler)
        handler.close()
    names = sorted(p.name for p in layout.logs_dir.iterdir())
    assert names == ["trainer.log", "trainer.log.1", "trainer.log.2", "trainer.log.3"]
    assert all(p.stat().st_size <= 2000 for p in layout.logs_dir.iterdir())
    layout.log_target.write_bytes(orjson.dumps({"journal": False, "file": "logs/trainer.log"}))
    shown = trainctl(layout.root, "logs", "-n", "60")
    assert shown.returncode == 0, shown.stderr
    numbers = [int(text.rpartition(" ")[2]) for text in shown.stdout.splitlines()]
    assert numbers == list(range(140, 200)), "the last 60, oldest first, from three files"


def test_records_keep_their_traceback_lines_and_filters_apply_to_whole_records(layout):
    layout.logs_dir.mkdir()
    layout.log_file.write_text("\n".join([line(1), line(2, f" [{ID}] failed:"), "Traceback (most recent call last):",
                                          '  File "x.py"', line(3)]) + "\n")
    shown = trainctl(layout.root, "logs", "--item", ID)
    assert shown.stdout.splitlines() == [line(2, f" [{ID}] failed:"), "Traceback (most recent call last):",
                                         '  File "x.py"']
    since = trainctl(layout.root, "logs", "--since", "2026-11-30T01:00:02")
    assert since.stdout.splitlines()[0] == line(2, f" [{ID}] failed:") and since.stdout.splitlines()[-1] == line(3)
    bad = trainctl(layout.root, "logs", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_follow_goes_on_across_a_rotation(layout):
    layout.logs_dir.mkdir()
    layout.log_file.write_text(line(0) + "\n")
    follower = subprocess.Popen([sys.executable, "-m", "ctl", "--base-dir", str(layout.root), "logs", "-f"],
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert follower.stdout.readline().rstrip() == line(0)
        with open(layout.log_file, "a") as fh:
            fh.write(line(1) + "\n" + line(2)[:20])  # a line still being written is not shown half
        assert follower.stdout.readline().rstrip() == line(1)
        with open(layout.log_file, "a") as fh:
            fh.write(line(2)[20:] + "\n")
        os.rename(layout.log_file, layout.log_file.with_name("trainer.log.1"))  # as the daemon rotates
        time.sleep(0.5)
        layout.log_file.write_text(line(3) + "\n")
        assert [follower.stdout.readline().rstrip() for _ in range(2)] == [line(2), line(3)]
    finally:
        follower.terminate()
        follower.wait(10)
        follower.stdout.close()


def test_unit_name_comes_from_the_cgroup(tmp_path):
    from trainer.daemon.logs import unit_name

    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/system.slice/system-trainer.slice/trainer@1.service\n")
    assert unit_name(str(cgroup)) == "trainer@1.service"
    cgroup.write_text("0::/user.slice/user-0.slice/session-3.scope\n")
    assert unit_name(str(cgroup)) is None


def test_last_reads_only_as_far_back_as_it_needs(layout):
    layout.logs_dir.mkdir()
    layout.log_file.with_name("trainer.log.1").write_text("not a log at all\n")
    layout.log_file.write_text("\n".join(line(n) for n in range(5)) + "\n")
    chosen, offset = logfile.last(layout, 3, logfile.Filter())
    assert [r.text for r in chosen] == [line(2), line(3), line(4)]
    assert offset == layout.log_file.stat().st_size
