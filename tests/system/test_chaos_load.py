"""Load, the quick version: concurrent enqueuers while the real daemon trains, thousands of
pending items, a long event log. Behaviour only; bench/chaos_load.py measures the times."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
from helpers.common import REPO, trainctl, write_jsonl

from trainer.config import Config
from trainer.eventkinds import Event
from trainer.intake import enqueue
from trainer.spool import events, queue
from trainer.states import ItemState, Priority


def test_eight_enqueuers_while_the_real_daemon_trains_lose_and_duplicate_nothing(tmp_path, request):
    pytest.importorskip("torch")
    from helpers.chaos_base import ENQUEUER, small_base
    from helpers.daemon_proc import DaemonProcess

    layout = small_base(tmp_path / "base", request.getfixturevalue("demo_model"))
    drop = tmp_path / "drop"
    drop.mkdir()
    daemon = DaemonProcess(layout)
    try:
        daemon.wait_ready()
        enqueuers = [subprocess.Popen([sys.executable, "-c", ENQUEUER, str(layout.root), str(drop), str(me), "2"],
                                      stdout=subprocess.PIPE, text=True, cwd=REPO) for me in range(8)]
        given = []
        for proc in enqueuers:
            out, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0
            given += [line.split() for line in out.splitlines()]
        assert len(given) == 16
        daemon.wait_for(lambda: queue.counts(layout)["done"] + queue.counts(layout)["failed"] >= len(given),
                        timeout=300, what="every file trained")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish(60) == 0
    finally:
        daemon.kill()

    done = queue.list_items(layout, [ItemState.DONE])
    assert sorted(item.meta.name for item in done) == sorted(name for _, name in given), "nothing lost"
    ids = [item.id for item in done]
    assert len(set(ids)) == len(ids) == 16, "ids unique"
    assert {i for i, _ in given if i != "inbox"} <= set(ids), "trainctl's ids are the items trained"
    log = events.read(layout)
    assert log.unreadable_lines == 0
    for kind in (Event.ENQUEUED, Event.CLAIMED, Event.DONE):
        per_id = collections.Counter(e["id"] for e in log.events if e["event"] == kind.value)
        assert per_id == collections.Counter(ids), f"each id {kind.value} exactly once"
    assert queue.counts(layout)["failed"] == 0 and os.listdir(layout.inbox) == []


def test_status_list_enqueue_and_show_work_with_thousands_pending(layout, tmp_path):
    from helpers.chaos_base import clone_pending

    sample = write_jsonl(tmp_path / "one.jsonl", [{"text": "hello"}])
    clone_pending(layout, enqueue.enqueue(layout, sample, limits=Config().spool).id, 1_999)
    status = trainctl(layout.root, "status", "--json")
    assert orjson.loads(status.stdout)["queues"]["pending"] == 2_000
    listing = trainctl(layout.root, "list", "-v")
    assert listing.returncode == 0 and len(listing.stdout.splitlines()) == 2_001
    served = [line.split()[0] for line in listing.stdout.splitlines()[1:]]
    high = [item.id for item in queue.list_items(layout, [ItemState.PENDING]) if item.priority is Priority.HIGH]
    assert served[:len(high)] == high, "listed in service order"
    added = trainctl(layout.root, "enqueue", "--priority", "high", str(sample))
    assert added.returncode == 0 and queue.counts(layout)["pending"] == 2_001
    assert trainctl(layout.root, "show", added.stdout.strip()).returncode == 0


def test_history_stays_correct_over_weeks_of_events(layout):
    start = time.time() - 14 * 86_400
    from helpers.chaos_base import synthetic_events

    ids = synthetic_events(layout, 14 * 1_440, start)  # two weeks at one file a minute
    recent = trainctl(layout.root, "history", "--since", "1d", "--json")
    assert recent.returncode == 0
    shown = orjson.loads(recent.stdout)["events"]
    assert 3 * 1_300 < len(shown) <= 3 * 1_441
    one = trainctl(layout.root, "history", "--id", ids[5], "--json")
    assert one.returncode == 0 and [e["event"] for e in orjson.loads(one.stdout)["events"]] == [
        "enqueued", "claimed", "done"]
    assert trainctl(layout.root, "status").returncode == 3, "status reads no event log: no daemon, exit 3"
