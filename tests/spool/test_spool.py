"""The spool's contract, on the real spool in a temp dir."""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from helpers.common import write_jsonl

from trainer.errors import InvalidData, NoSuchItem, WrongState
from trainer.intake import enqueue
from trainer.ids import ID_LENGTH
from trainer.spool import events, listing, queue
from trainer.spool.item import META_NAME
from trainer.states import ItemState, Priority
from trainer.timefmt import iso, utc_now


def _event_kinds(layout, item_id=None):
    return [e["event"] for e in events.read(layout, item_id=item_id).events]


def test_enqueue_copies_the_file_and_records_its_metadata(layout, limits, chat_file):
    src = chat_file(records=5)
    before = src.read_bytes()
    meta = enqueue.enqueue(layout, src, limits=limits)
    item = queue.find(layout, meta.id)
    assert item.state is ItemState.PENDING and item.priority is Priority.NORMAL
    assert item.data_path.read_bytes() == before
    assert src.read_bytes() == before, "the user's file is never modified"
    assert meta.sha256 == hashlib.sha256(before).hexdigest()
    assert (meta.size, meta.records, meta.attempts, meta.name) == (len(before), 5, 0, src.name)
    assert _event_kinds(layout, meta.id) == ["enqueued"]


def test_invalid_file_adds_nothing_and_leaves_no_debris(layout, limits, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"nope": 1}])
    with pytest.raises(InvalidData) as caught:
        enqueue.enqueue(layout, bad, limits=limits)
    assert any(":2:" in line for line in caught.value.details)
    assert queue.counts(layout)["pending"] == 0
    assert os.listdir(layout.tmp) == []
    assert _event_kinds(layout) == []


@pytest.mark.parametrize("make", ["missing", "directory", "fifo"])
def test_non_regular_sources_are_refused_without_blocking(layout, limits, tmp_path, make):
    path = tmp_path / "thing"
    if make == "directory":
        path.mkdir()
    elif make == "fifo":
        os.mkfifo(path)  # opening it for reading must not wait for a writer
    with pytest.raises(InvalidData):
        enqueue.enqueue(layout, path, limits=limits)
    assert os.listdir(layout.tmp) == []


def test_claims_serve_high_before_normal_before_low_and_fifo_within(layout, limits, chat_file):
    low = enqueue.enqueue(layout, chat_file(), limits=limits, priority=Priority.LOW).id
    n1 = enqueue.enqueue(layout, chat_file(), limits=limits).id
    high = enqueue.enqueue(layout, chat_file(), limits=limits, priority=Priority.HIGH).id
    n2 = enqueue.enqueue(layout, chat_file(), limits=limits).id
    order = []
    while (item := queue.claim_next(layout)) is not None:
        order.append(item.id)
        queue.complete(layout, item.id)
    assert order == [high, n1, n2, low]
    assert queue.counts(layout)["done"] == 4


def test_only_one_item_can_be_active(layout, limits, chat_file):
    enqueue.enqueue(layout, chat_file(), limits=limits)
    enqueue.enqueue(layout, chat_file(), limits=limits)
    first = queue.claim_next(layout)
    with pytest.raises(WrongState, match="already active"):
        queue.claim_next(layout)
    assert queue.active_item(layout).id == first.id


def test_requeue_counts_an_attempt_and_delays_the_retry(layout, limits, chat_file):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    queue.claim_next(layout)
    now = utc_now()
    queue.requeue(layout, item_id, reason="out of memory", not_before=now + timedelta(seconds=30))
    item = queue.find(layout, item_id)
    assert item.state is ItemState.PENDING
    assert item.meta.attempts == 1
    assert item.meta.errors[-1].message == "out of memory" and item.meta.errors[-1].kind == "transient"
    asked = []

    def retry_due(asked_id, not_before):
        asked.append((asked_id, not_before))
        return len(asked) > 1

    assert queue.claim_next(layout) is None, "not before its retry time"
    assert queue.claim_next(layout, retry_due) is None, "the caller's clock judges the delay"
    assert asked == [(item_id, item.meta.not_before)] and item.meta.not_before == iso(now + timedelta(seconds=30))
    assert queue.claim_next(layout, retry_due).id == item_id


def test_graceful_requeue_costs_no_attempt(layout, limits, chat_file):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    queue.claim_next(layout)
    queue.requeue(layout, item_id, reason="stopping", count_attempt=False)
    assert queue.find(layout, item_id).meta.attempts == 0


def test_fail_then_retry_resets_attempts_and_keeps_the_error_history(layout, limits, chat_file):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    queue.claim_next(layout)
    queue.requeue(layout, item_id, reason="crash")
    queue.claim_next(layout)
    queue.fail(layout, item_id, "loss is NaN")
    failed = queue.find(layout, item_id)
    assert failed.state is ItemState.FAILED and failed.meta.attempts == 1
    enqueue.retry(layout, item_id, limits)
    again = queue.find(layout, item_id)
    assert again.state is ItemState.PENDING and again.meta.attempts == 0
    assert [e.message for e in again.meta.errors] == ["crash", "loss is NaN"]
    assert _event_kinds(layout, item_id) == ["enqueued", "claimed", "requeued", "claimed", "failed", "retried"]


def test_hold_release_and_move_keep_the_item_and_its_age(layout, limits, chat_file):
    older = enqueue.enqueue(layout, chat_file(), limits=limits).id
    newer = enqueue.enqueue(layout, chat_file(), limits=limits, priority=Priority.HIGH).id
    queue.hold(layout, older)
    assert queue.find(layout, older).state is ItemState.HELD
    queue.move(layout, older, Priority.HIGH)  # a held item changes priority in place
    queue.release(layout, older)
    item = queue.find(layout, older)
    assert item.state is ItemState.PENDING and item.priority is Priority.HIGH
    assert item.meta.priority is Priority.HIGH
    assert queue.claim_next(layout).id == older, "FIFO by age within the priority"
    assert _event_kinds(layout, older) == ["enqueued", "held", "moved", "released", "claimed"]
    assert queue.find(layout, newer).state is ItemState.PENDING


def test_enqueue_held_waits_for_release(layout, limits, chat_file):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits, hold=True).id
    assert queue.claim_next(layout) is None
    queue.release(layout, item_id)
    assert queue.claim_next(layout).id == item_id


def test_remove_refuses_the_active_item_and_deletes_others(layout, limits, chat_file):
    active = enqueue.enqueue(layout, chat_file(), limits=limits).id
    other = enqueue.enqueue(layout, chat_file(), limits=limits).id
    queue.claim_next(layout)
    with pytest.raises(WrongState, match="active"):
        queue.remove(layout, active)
    queue.remove(layout, other)
    with pytest.raises(NoSuchItem):
        queue.find(layout, other)
    assert os.listdir(layout.tmp) == []
    assert queue.find(layout, active).state is ItemState.ACTIVE


@pytest.mark.parametrize("operation", ["hold", "release", "retry", "complete", "requeue"])
def test_operations_in_the_wrong_state_say_so(layout, limits, chat_file, operation):
    # hold needs a pending item and release a held one: give each the other kind.
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits, hold=(operation != "release")).id
    calls = {
        "hold": lambda: queue.hold(layout, item_id),
        "release": lambda: queue.release(layout, item_id),
        "retry": lambda: enqueue.retry(layout, item_id, limits),
        "complete": lambda: queue.complete(layout, item_id),
        "requeue": lambda: queue.requeue(layout, item_id, reason="x"),
    }
    with pytest.raises(WrongState, match="cannot"):
        calls[operation]()


@pytest.mark.parametrize("bad_id", ["../x", "/etc/passwd", "", "20261128T194440.123456Z-3fa9c1b2/..",
                                    "..", "20261128T194440.123456Z-3FA9C1B2"])
def test_ids_with_path_tricks_are_refused(layout, bad_id):
    with pytest.raises(NoSuchItem, match="not an item id"):
        queue.find(layout, bad_id)


def test_a_corrupt_meta_is_listed_with_its_problem_and_retry_rebuilds_it(layout, limits, chat_file):
    item_id = enqueue.enqueue(layout, chat_file(records=4), limits=limits).id
    queue.claim_next(layout)
    queue.fail(layout, item_id, "boom")
    item = queue.find(layout, item_id)
    (item.path / META_NAME).write_bytes(b"\x00garbage{")
    listed = queue.list_items(layout, [ItemState.FAILED])
    assert listed[0].meta is None and "unreadable" in listed[0].meta_problem
    enqueue.retry(layout, item_id, limits)
    rebuilt = queue.find(layout, item_id)
    assert rebuilt.state is ItemState.PENDING and rebuilt.meta.records == 4


def test_foreign_entries_in_spool_dirs_are_ignored(layout, limits, chat_file):
    (layout.pending(Priority.NORMAL) / "notes.txt").write_text("hello")
    (layout.pending(Priority.NORMAL) / "random-dir").mkdir()
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    assert [i.id for i in queue.list_items(layout, [ItemState.PENDING])] == [item_id]
    assert queue.claim_next(layout).id == item_id


def test_counts_split_pending_by_priority(layout, limits, chat_file):
    enqueue.enqueue(layout, chat_file(), limits=limits, priority=Priority.LOW)
    enqueue.enqueue(layout, chat_file(), limits=limits, priority=Priority.LOW)
    enqueue.enqueue(layout, chat_file(), limits=limits, hold=True)
    c = queue.counts(layout)
    assert (c["pending"], c["pending.low"], c["pending.high"], c["held"]) == (2, 2, 0, 1)


def test_counts_are_of_items_only_whatever_else_lies_in_a_queue_dir(layout, limits, chat_file):
    for _ in range(3):
        enqueue.enqueue(layout, chat_file(), limits=limits)
    assert queue.counts(layout)["pending"] == 3
    pending = layout.pending(Priority.NORMAL)
    item_id = queue.list_items(layout, [ItemState.PENDING])[0].id
    (pending / ("." + item_id[1:])).write_text("an editor's swap file, as long as an id")
    (pending / "notes.txt").write_text("hello")
    (pending / (item_id + "x")).mkdir()
    assert queue.counts(layout)["pending"] == 3
    (pending / ("-" + item_id[1:])).mkdir()  # sorts before a dotfile: counted, as long as an id
    assert queue.counts(layout)["pending"] == 4


@given(st.lists(st.sampled_from([b"20261128T194440.123456Z-3fa9c1b2", b".0261128T194440.123456Z-3fa9c1b2",
                                  b"-0261128T194440.123456Z-3fa9c1b2", b"20261128T194440.123456Z-3fa9c1b", b"x",
                                  b".swp", "é".encode() * 16, b"20261128T194440.123456Z-3fa9c1b2x"])
                | st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b),
                max_size=30))
def test_a_dir_counts_its_names_as_long_as_an_id_and_no_dotfile(names):
    with tempfile.TemporaryDirectory() as directory:
        for name in set(names):
            if name not in (b".", b".."):
                os.mkdir(os.path.join(os.fsencode(directory), name))
        listed = os.listdir(os.fsencode(directory))
        expected = sum(1 for n in listed if len(n) == ID_LENGTH and not n.startswith(b"."))
        assert listing._count(directory) == expected


def test_every_published_file_is_complete_and_group_readable(layout, limits, chat_file):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    item = queue.find(layout, item_id)
    for path in (item.data_path, item.meta_path):
        mode = os.stat(path).st_mode & 0o777
        assert mode & 0o040 and not mode & 0o002, oct(mode)
    assert os.stat(item.path).st_mode & 0o2000, "setgid keeps the group on new entries"


def test_token_statistics_are_recorded_on_the_active_item(layout, limits, chat_file):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    queue.claim_next(layout)
    stats = {"examples": 3, "mean": 12.0, "p95": 14, "max": 14, "truncated": 0}
    queue.set_tokens(layout, item_id, stats)
    assert queue.find(layout, item_id).meta.tokens == stats


def test_an_item_deleted_by_hand_between_listing_and_claim_is_skipped(layout, limits, chat_file, monkeypatch):
    import shutil

    first = enqueue.enqueue(layout, chat_file(), limits=limits).id
    second = enqueue.enqueue(layout, chat_file(), limits=limits).id
    real = queue._entries

    def listing_then_rm(directory):
        names = real(directory)
        if first in names:
            shutil.rmtree(directory / first)  # someone's rm -rf lands right after the listing
        return names

    monkeypatch.setattr(queue, "_entries", listing_then_rm)
    assert queue.claim_next(layout).id == second
