"""Faults and hostile input against the spool and trainctl: nothing lost, one clear line."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time

import orjson
import pytest
from helpers.common import REPO, trainctl, write_jsonl

from trainer.errors import InvalidData
from trainer.exitcodes import ExitCode
from trainer.intake import enqueue, inbox
from trainer.intake.inbox import ingest
from trainer.spool import queue
from trainer.spool.origin import origin_record
from trainer.spool.sweep import sweep_tmp
from trainer.states import ItemState


def _no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_mid_ingest_puts_the_file_back_in_the_inbox(layout, limits, chat_file, monkeypatch, fault):
    src = chat_file(records=3)
    original = src.read_bytes()
    os.rename(src, layout.inbox / "mine.jsonl")

    def explode(*args, **kwargs):
        raise fault

    monkeypatch.setattr(inbox, "_validate_staged", explode)
    with pytest.raises(type(fault)):
        ingest(layout, "mine.jsonl", limits)
    assert (layout.inbox / "mine.jsonl").read_bytes() == original
    assert os.listdir(layout.tmp) == [] and queue.counts(layout)["pending"] == 0


def test_a_full_disk_during_ingest_loses_nothing(small_tmpfs, limits):
    from trainer.config import default_config_toml
    from trainer.spool.layout import init_base

    mount = small_tmpfs("256k")
    layout, _ = init_base(mount / "base", default_config_toml())
    data = b"".join(orjson.dumps({"text": f"line {i}"}) + b"\n" for i in range(2000))
    (layout.inbox / "big.jsonl").write_bytes(data)
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk, then free one page: room for origin.json, none for meta.json
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        os.ftruncate(fd, os.fstat(fd).st_size - 4096)
    os.close(fd)
    with pytest.raises(OSError) as caught:
        ingest(layout, "big.jsonl", limits)
    assert caught.value.errno == errno.ENOSPC
    assert (layout.inbox / "big.jsonl").read_bytes() == data, "the user's file is intact in the inbox"
    os.unlink(filler)
    taken = ingest(layout, "big.jsonl", limits)
    assert taken.state is ItemState.PENDING and queue.find(layout, taken.item_id).meta.records == 2000


def test_files_keep_the_group_modes_whatever_the_umask(layout, chat_file):
    assert os.stat(layout.spool_lock).st_mode & 0o777 == 0o660
    assert os.stat(layout.events_dir).st_mode & 0o7777 == 0o2770
    src = chat_file()
    code = ("import os, sys\nos.umask(0o077)\nfrom ctl.cli import main\n"
            "main(['--base-dir', sys.argv[1], 'enqueue', sys.argv[2]])\n")
    result = subprocess.run([sys.executable, "-c", code, str(layout.root), str(src)], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    item = queue.find(layout, result.stdout.strip())
    assert os.stat(item.data_path).st_mode & 0o777 == 0o640
    assert os.stat(item.meta_path).st_mode & 0o777 == 0o640
    assert os.stat(item.path).st_mode & 0o7777 == 0o2770
    [segment] = layout.events_dir.glob("*.jsonl")  # made by that enqueue's event
    assert os.stat(segment).st_mode & 0o777 == 0o660, "the next group member can append to it"


def test_the_same_file_given_twice_is_refused_and_kept(layout, chat_file):
    src = chat_file()
    result = trainctl(layout.root, "enqueue", "--move", str(src), str(src))
    assert result.returncode == ExitCode.DATA_INVALID and "given twice" in result.stderr
    _no_traceback(result)
    assert src.exists() and queue.counts(layout)["pending"] == 0


def test_move_keeps_a_file_replaced_after_it_was_read(layout, limits, chat_file):
    src = chat_file()
    queued = enqueue.enqueue_batch(layout, [src], limits=limits)[0]
    newer = src.with_suffix(".new")
    newer.write_text('{"text": "version two"}\n')
    os.rename(newer, src)  # an editor's save: a new file under the same name
    reason = enqueue.delete_source(queued)
    assert reason and "changed" in reason and src.read_text() == '{"text": "version two"}\n'


def test_a_removed_item_is_never_given_back_to_the_inbox(layout):
    doomed = layout.tmp / "20261128T000000.000000Z-00000000.removed"
    doomed.mkdir()
    (doomed / "origin.json").write_bytes(origin_record("gone.jsonl"))
    (doomed / "data.jsonl").write_bytes(b'{"text": "x"}\n')
    sweep_tmp(layout, min_age_s=0)
    assert os.listdir(layout.inbox) == [] and os.listdir(layout.tmp) == []


def test_retry_validates_again_and_keeps_invalid_data_failed(layout, limits, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"text": 5}])
    os.rename(bad, layout.inbox / "bad.jsonl")
    item_id = ingest(layout, "bad.jsonl", limits).item_id
    result = trainctl(layout.root, "retry", item_id)
    assert result.returncode == ExitCode.DATA_INVALID and "still invalid" in result.stderr
    assert queue.find(layout, item_id).state is ItemState.FAILED
    data = queue.find(layout, item_id).data_path
    data.write_bytes(b'{"text": "ok"}\n{"text": "fixed"}\n')  # fixed in place
    assert trainctl(layout.root, "retry", item_id).returncode == 0
    item = queue.find(layout, item_id)
    assert item.state is ItemState.PENDING and item.meta.records == 2


def test_wait_idle_counts_an_inbox_file_being_taken(layout, fake_daemon):
    fake_daemon(layout.root)
    staging = layout.tmp / "20261128T000000.000000Z-11111111"
    staging.mkdir()
    (staging / "origin.json").write_bytes(origin_record("x.jsonl"))
    assert trainctl(layout.root, "wait", "--idle", "--timeout", "0.3").returncode == ExitCode.TIMEOUT
    shutil.rmtree(staging)
    assert trainctl(layout.root, "wait", "--idle", "--timeout", "5").returncode == 0


def test_a_garbage_retry_time_does_not_block_the_queue(layout, limits, chat_file):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    item = queue.find(layout, item_id)
    meta = orjson.loads(item.meta_path.read_bytes())
    meta["not_before"] = "garbage"
    item.meta_path.write_bytes(orjson.dumps(meta))
    assert "not_before" in queue.find(layout, item_id).meta_problem
    assert queue.claim_next(layout).id == item_id


def test_names_that_are_not_utf8_are_queued_and_shown_escaped(layout, limits, tmp_path):
    raw = os.fsdecode(b"caf\xe9.jsonl")
    (layout.inbox / raw).write_bytes(b'{"text": "bonjour"}\n')
    taken = ingest(layout, raw, limits)
    assert taken.state is ItemState.PENDING and queue.find(layout, taken.item_id).meta.name == "caf\\xe9.jsonl"
    outside = tmp_path / raw
    outside.write_bytes(b'{"text": "salut"}\n')
    result = trainctl(layout.root, "enqueue", str(outside))
    assert result.returncode == 0, result.stderr
    assert "caf\\xe9.jsonl" in trainctl(layout.root, "list").stdout


@pytest.mark.parametrize("make", ["not_a_dir", "too_long", "loop", "proc_mem"])
def test_unopenable_paths_are_one_line_with_exit_65(layout, tmp_path, make):
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"text": "x"}])
    path = {
        "not_a_dir": ok / "x",
        "too_long": tmp_path / ("a" * 300),
        "loop": tmp_path / "loop",
        "proc_mem": "/proc/self/mem",
    }[make]
    if make == "loop":
        os.symlink(tmp_path / "loop", tmp_path / "loop")
    result = trainctl(layout.root, "enqueue", str(path))
    _no_traceback(result)
    assert result.returncode == ExitCode.DATA_INVALID, result.stderr
    assert queue.counts(layout)["pending"] == 0


def test_a_directory_is_named_as_one(layout, tmp_path):
    result = trainctl(layout.root, "enqueue", str(tmp_path))
    assert result.returncode == ExitCode.DATA_INVALID and "is a directory" in result.stderr


def test_a_missing_explicit_config_is_an_error(layout):
    result = trainctl(layout.root, "--config", str(layout.root / "nope.toml"), "status")
    assert result.returncode == ExitCode.CONFIG and "no such file" in result.stderr
    _no_traceback(result)


def test_absurd_since_is_a_usage_error(layout):
    result = trainctl(layout.root, "history", "--since", "99999999999999d")
    assert result.returncode == ExitCode.USAGE
    _no_traceback(result)


@pytest.mark.parametrize("state", [
    {"seconds_per_step": 1e308, "step": 1, "total": 10},
    {"last_error": 5, "last_checkpoint": [1, 2]},
])
def test_a_damaged_daemon_state_still_prints(layout, fake_daemon, state):
    from trainer.spool import control
    from trainer.timefmt import utc_now

    fake_daemon(layout.root, "--no-heartbeat")
    now = utc_now()
    item = {k: v for k, v in state.items() if k in ("seconds_per_step", "step", "total")}
    extra = {k: v for k, v in state.items() if k not in item}
    control.write_state(layout, control.daemon_state("training", pid=1, started_at=now, now=now,
                                                     item=item or None, **extra))
    for args in (["status"], ["status", "--json"]):
        result = trainctl(layout.root, *args)
        _no_traceback(result)
        assert result.returncode == 0


def test_a_fifo_in_place_of_metadata_never_hangs_list(layout, limits, chat_file):
    item = queue.find(layout, enqueue.enqueue(layout, chat_file(), limits=limits).id)
    item.meta_path.unlink()
    os.mkfifo(item.meta_path)
    started = time.monotonic()
    result = trainctl(layout.root, "list", timeout=20)
    assert result.returncode == 0 and "not a regular file" in result.stdout
    assert time.monotonic() - started < 10


def test_an_enqueue_with_a_bad_file_in_the_batch_queues_nothing(layout, chat_file, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"nope": 1}])
    with pytest.raises(InvalidData) as caught:
        enqueue.enqueue_batch(layout, [chat_file(), bad, chat_file()], limits=__import__("trainer.config").config.Config().spool)
    assert any("bad.jsonl:1" in line for line in caught.value.details)
    assert queue.counts(layout)["pending"] == 0 and os.listdir(layout.tmp) == []
