"""Hostile and broken input, from a seeded generator (tests/hostile.py): the quick version.

Every regular file ends pending (or done) when valid, failed with a reason naming it when
not; everything else (symlinks, fifos, devices, directories, sockets) is left exactly as it
was, never read, with one logged refusal. The long version is bench/chaos_inbox.py.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import time

import pytest
from helpers.chaos_base import PeakRss, small_base
from helpers.common import REPO, trainctl
from helpers.hostile import CONTENTS, NAMES, fingerprint, make_regular, make_special, special_kinds_possible

from trainer.config import Config
from trainer.exitcodes import ExitCode
from trainer.intake import enqueue
from trainer.intake.inbox import InboxScanner, ingest
from trainer.spool import queue
from trainer.spool.item import display_name
from trainer.states import ItemState

SEED = 20261128
HUGE_LINE = 9 * 2**20  # just over the default max_line_bytes (8 MiB); 200 MB in the long version


def _drop(directory, outside, regular: int, seed: int = SEED):
    rng = random.Random(seed)
    inputs = [make_regular(directory, rng, n, HUGE_LINE) for n in range(regular)]
    inputs += [make_special(directory, outside, kind, 1000 + n) for n, kind in enumerate(special_kinds_possible())]
    return inputs


def _outcomes(layout) -> dict[str, object]:
    """Every item by its display name."""
    items = queue.list_items(layout, list(ItemState))
    return {item.meta.name: item for item in items}


def _assert_each_regular_input_ended(found: dict, inputs, valid: ItemState) -> None:
    """Each regular file is one item: valid ones in ``valid``, the rest failed with a one-line
    reason that names the file."""
    for entry in inputs:
        if not entry.regular:
            continue
        item = found[display_name(entry.name)]
        if entry.valid:
            assert item.state is valid, (entry, item.meta.errors)
        else:
            assert item.state is ItemState.FAILED, entry
            reason = item.meta.errors[0].message
            assert display_name(entry.name) in reason and "\n" not in reason, (entry, reason)


def _assert_left_alone(layout, inputs, before, outside):
    for entry in inputs:
        if not entry.regular:
            assert fingerprint(layout.inbox / entry.name) == before[entry.name], entry
    for target in outside.iterdir():
        assert target.read_bytes() == b'{"text": "a file outside the base dir"}\n', "never written"


def test_hostile_inbox_entries_each_end_pending_failed_with_a_reason_or_untouched(layout, tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    inputs = _drop(layout.inbox, outside, regular=120)
    assert {i.kind for i in inputs} >= set(CONTENTS) and {i.name_kind for i in inputs} >= set(NAMES)
    before = {i.name: fingerprint(layout.inbox / i.name) for i in inputs if not i.regular}
    scanner = InboxScanner(layout.inbox, settle_s=0)
    caplog.set_level(logging.WARNING, logger="trainer.intake.inbox")
    for _ in range(3):  # refusals are logged once, not on every scan
        ready = scanner.ready(time.time(), time.monotonic())
    for name in ready:
        ingest(layout, name, Config().spool)

    found = _outcomes(layout)
    _assert_each_regular_input_ended(found, inputs, valid=ItemState.PENDING)
    assert len(found) == sum(i.regular for i in inputs), "one item per regular file, none lost"
    _assert_left_alone(layout, inputs, before, outside)
    assert sorted(os.listdir(layout.inbox)) == sorted(i.name for i in inputs if not i.regular)
    assert os.listdir(layout.tmp) == []
    refusals = [r.getMessage() for r in caplog.records if "not taking" in r.getMessage()]
    assert len(refusals) == len(before), refusals
    assert all("\n" not in line for line in refusals), "a name never splits a log line"


def test_names_are_shown_on_one_line_whatever_they_hold(layout, tmp_path):
    src = tmp_path / "x"
    src.write_bytes(b'{"text": "hello"}\n')
    for name in ("two\nlines.jsonl", "\x1b]0;pwned\x07.jsonl", "\u202egnp.jsonl"):
        os.rename(src, layout.inbox / name)
        ingest(layout, name, Config().spool)
        src.write_bytes(b'{"text": "hello"}\n')
    listing = trainctl(layout.root, "list")
    assert listing.returncode == 0
    assert len(listing.stdout.splitlines()) == 4 and "\x1b" not in listing.stdout and "\u202e" not in listing.stdout
    assert "two\\x0alines.jsonl" in listing.stdout


def test_trainctl_enqueue_refuses_every_hostile_file_by_name_and_queues_nothing(layout, tmp_path):
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    drop.mkdir()
    outside.mkdir()
    inputs = _drop(drop, outside, regular=60, seed=SEED + 1)
    paths = [str(drop / i.name) for i in inputs]
    result = trainctl(layout.root, "enqueue", "--", *paths)
    assert result.returncode == ExitCode.DATA_INVALID and "Traceback" not in result.stderr
    for entry in inputs:
        # trainctl follows a symlink the user names (it reads as that user, like cp): only
        # what is not a regular file, or not valid, is refused.
        refused = not entry.valid if entry.regular else entry.kind not in ("symlink-outside",)
        if refused:
            assert display_name(str(drop / entry.name)) in result.stderr, entry
    assert queue.counts(layout)["pending"] == 0 and os.listdir(layout.tmp) == []


@pytest.mark.parametrize("kind", ["fifo", "char-device", "socket", "directory", "dangling-symlink",
                                  "symlink-dev-zero"])
def test_trainctl_enqueue_of_a_special_file_never_blocks_and_says_what_it_is(layout, tmp_path, kind):
    if kind not in special_kinds_possible():
        pytest.skip("device nodes need root")
    entry = make_special(tmp_path, tmp_path, kind, 0)
    result = trainctl(layout.root, "enqueue", str(tmp_path / entry.name), timeout=20)
    assert result.returncode == ExitCode.DATA_INVALID, result.stderr
    header, line = result.stderr.strip().split("\n")  # "nothing was queued", then the file's line
    assert "nothing was queued" in header and "Traceback" not in result.stderr
    assert any(word in line for word in ("not a regular file", "is a directory", "no such file")), line


def test_a_leading_dash_name_needs_the_double_dash_and_then_is_queued(layout, tmp_path, chat_file):
    os.rename(chat_file(), tmp_path / "-rf.jsonl")
    bare = trainctl(layout.root, "enqueue", "-rf.jsonl")
    assert bare.returncode == ExitCode.USAGE and "Traceback" not in bare.stderr
    queued = subprocess.run([sys.executable, "-m", "ctl", "--base-dir", str(layout.root), "enqueue", "--",
                             "-rf.jsonl"], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert queued.returncode == 0, queued.stderr
    assert queue.find(layout, queued.stdout.strip()).meta.name == "-rf.jsonl"


def test_a_file_still_appended_to_after_its_rename_ends_pending_or_failed_with_that_reason(layout, tmp_path):
    path = layout.inbox / ".growing.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "f = open(sys.argv[1], 'ab', buffering=0)\n"
        "os.rename(sys.argv[1], sys.argv[2]); print('renamed', flush=True)\n"
        "for i in range(4000): f.write(b'{\"text\": \"line %d\"}\\n' % i)\n"
    ), str(path), str(layout.inbox / "growing.jsonl")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "renamed"
        taken = ingest(layout, "growing.jsonl", Config().spool)
    finally:
        writer.wait(30)
        writer.stdout.close()
    item = queue.find(layout, taken.item_id)
    if item.state is ItemState.FAILED:
        assert "kept changing while it was read" in item.meta.errors[0].message
        return
    now = enqueue.validate_item_data(item, Config().spool)
    if now.size == item.meta.size:
        assert now.sha256 == item.meta.sha256, "read whole, after the writer was done"
    else:
        # The writer paused just as it was read, then went on through its open descriptor: a
        # rename cannot take a file away from a writer. The queued copy no longer matches its
        # hash, which the daemon checks at claim, failing it "changed on disk since it was
        # queued" (tests/test_daemon.py) rather than training on bytes nobody validated.
        assert now.sha256 != item.meta.sha256


def test_the_real_daemon_survives_a_hostile_inbox_with_bounded_memory(tmp_path, request):
    pytest.importorskip("torch")
    from helpers.daemon_proc import DaemonProcess

    demo_model = request.getfixturevalue("demo_model")

    layout = small_base(tmp_path / "base", demo_model)
    outside = tmp_path / "outside"
    outside.mkdir()
    inputs = _drop(layout.inbox, outside, regular=len(CONTENTS) + 4)
    before = {i.name: fingerprint(layout.inbox / i.name) for i in inputs if not i.regular}
    daemon = DaemonProcess(layout, "--exit-when-idle")
    rss = PeakRss(daemon.pid)
    try:
        assert daemon.finish(timeout=240) == 0, daemon.output()
    finally:
        daemon.kill()
        peak = rss.stop()
    found = _outcomes(layout)
    _assert_each_regular_input_ended(found, inputs, valid=ItemState.DONE)
    _assert_left_alone(layout, inputs, before, outside)
    log = (layout.root.parent / "daemon.log").read_text(errors="replace")
    assert "Traceback" not in log
    assert log.count("not taking") == len(before)
    print(f"\n{len(inputs)} inputs, daemon peak RSS {peak / 2**20:.0f} MiB")
