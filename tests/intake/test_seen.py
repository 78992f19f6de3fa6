"""Data queued twice: a file with the same content as a queued, active or done item is named
(or refused with --reject-duplicates), and records seen in earlier files are counted, through
trainctl enqueue and the inbox, with the index kept in the base dir (trainer.intake.seen)."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

import orjson
from helpers.common import trainctl, write_jsonl

from trainer.config import Config
from trainer.intake import seen
from trainer.intake.enqueue import enqueue, enqueue_batch
from trainer.intake.inbox import ingest
from trainer.spool import events, queue
from trainer.states import ItemState

LIMITS = Config().spool


def chat(n: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": f"a{n}"}]}


def test_the_same_content_again_is_queued_with_a_warning_naming_the_item_and_its_state(layout, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [chat(1), chat(2)])
    again = write_jsonl(tmp_path / "copy-of-a.jsonl", [chat(1), chat(2)])
    done = trainctl(layout.root, "enqueue", str(first))
    assert done.returncode == 0, done.stderr
    first_id = done.stdout.strip()
    queue.claim_next(layout, datetime.now(timezone.utc))
    queue.complete(layout, first_id)

    result = trainctl(layout.root, "enqueue", str(again))
    assert result.returncode == 0, result.stderr
    second_id = result.stdout.strip()
    assert (f"warning: copy-of-a.jsonl: the same content (sha256) as {first_id} (done): queued anyway "
            "(--reject-duplicates refuses such files)") in result.stderr
    assert f"queued copy-of-a.jsonl as {second_id} (messages, 2 records, 2 seen in earlier files, " in result.stderr
    assert queue.find(layout, second_id).state is ItemState.PENDING
    enqueued = events.read(layout, item_id=second_id).events[0]
    assert enqueued["same_content_as"] == [first_id] and enqueued["repeated_records"] == 2


def test_reject_duplicates_refuses_with_exit_65_and_queues_nothing(layout, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [chat(1)])
    first_id = trainctl(layout.root, "enqueue", str(data)).stdout.strip()
    fresh = write_jsonl(tmp_path / "b.jsonl", [chat(2)])
    result = trainctl(layout.root, "enqueue", "--reject-duplicates", str(fresh), str(data))
    assert result.returncode == 65
    assert f"a.jsonl: the same content (sha256) as {first_id} (pending)" in result.stderr
    assert "nothing was queued" in result.stderr and result.stdout == ""
    assert [item.id for item in queue.list_items(layout, list(ItemState))] == [first_id]
    # Refused, b.jsonl left nothing behind in the index either: queued now, it is no repeat.
    again = trainctl(layout.root, "enqueue", "--reject-duplicates", str(fresh))
    assert again.returncode == 0 and "seen in earlier files" not in again.stderr


def test_failed_or_removed_items_do_not_make_a_file_a_duplicate(layout, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [chat(1)])
    failed = enqueue(layout, data, limits=LIMITS).id
    queue.claim_next(layout, datetime.now(timezone.utc))
    queue.fail(layout, failed, "broken", kind="permanent")
    removed = enqueue(layout, write_jsonl(tmp_path / "b.jsonl", [chat(2)]), limits=LIMITS).id
    queue.remove(layout, removed)
    assert queue.find(layout, failed).state is ItemState.FAILED
    result = trainctl(layout.root, "enqueue", "--reject-duplicates", str(data), str(tmp_path / "b.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert result.stderr.count("1 seen in earlier files") == 2  # their records were seen all the same


def test_two_files_with_the_same_content_in_one_batch_are_named_too(layout, tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", [chat(1)])
    two = write_jsonl(tmp_path / "two.jsonl", [chat(1)])
    queued = enqueue_batch(layout, [one, two], limits=LIMITS)
    assert queued[0].duplicates == ()
    assert queued[1].duplicates == ((queued[0].meta.id, "in this batch"),)
    assert (queued[0].meta.repeated_records, queued[1].meta.repeated_records) == (0, 1)


def test_records_repeated_across_files_and_within_one_are_counted_in_the_metadata(layout, tmp_path):
    enqueue(layout, write_jsonl(tmp_path / "a.jsonl", [chat(1), chat(2), chat(3)]), limits=LIMITS)
    # chat(2) twice (seen before: both count), chat(4) three times (new: two repeats within)
    second = write_jsonl(tmp_path / "b.jsonl", [chat(2), chat(4), chat(2), chat(4), chat(5), chat(4)])
    meta = enqueue(layout, second, limits=LIMITS)
    assert (meta.records, meta.repeated_records, meta.repeated_in_file) == (6, 2, 2)
    assert queue.find(layout, meta.id).meta.repeated_records == 2  # kept in meta.json
    # The same record written with CRLF, spaces around it, and a BOM is the same record.
    (tmp_path / "c.jsonl").write_bytes(b"\xef\xbb\xbf" + orjson.dumps(chat(5)) + b"  \r\n"
                                       + orjson.dumps(chat(1)) + b"\r\n")
    assert enqueue(layout, tmp_path / "c.jsonl", limits=LIMITS).repeated_records == 2


def test_the_index_is_read_only_where_a_batch_falls_and_shrugs_off_a_torn_line(layout, tmp_path):
    enqueue(layout, write_jsonl(tmp_path / "a.jsonl", [chat(n) for n in range(300)]), limits=LIMITS)
    buckets = os.listdir(layout.index_dir / "records")
    assert 150 < len(buckets) <= 256  # 300 records spread over the 256 buckets
    assert all(os.stat(layout.record_index(b)).st_mode & 0o777 == 0o660 for b in buckets)
    # A crash mid-append left a torn line in a bucket: the next append ends it first.
    torn = layout.record_index(buckets[0])
    with open(torn, "ab") as file:
        file.write(b"0123")
    meta = enqueue(layout, write_jsonl(tmp_path / "b.jsonl", [chat(n) for n in range(290, 310)]), limits=LIMITS)
    assert meta.repeated_records == 10
    assert all(len(line) == 16 for b in buckets for line in layout.record_index(b).read_text().split()
               if line != "0123")


def test_an_inbox_file_with_the_same_content_is_taken_with_a_warning_never_refused(layout, tmp_path, caplog):
    data = write_jsonl(tmp_path / "a.jsonl", [chat(1), chat(2)])
    first = enqueue(layout, data, limits=LIMITS).id
    write_jsonl(layout.inbox / "dropped.jsonl", [chat(1), chat(2)])
    with caplog.at_level(logging.WARNING, logger="trainer.intake.inbox"):
        taken = ingest(layout, "dropped.jsonl", LIMITS)
    assert taken.state is ItemState.PENDING
    assert f"dropped.jsonl: the same content (sha256) as {first} (pending): queued as {taken.item_id} anyway" \
        in caplog.text
    enqueued = events.read(layout, item_id=taken.item_id).events[0]
    assert enqueued["same_content_as"] == [first] and enqueued["repeated_records"] == 2
    meta = queue.find(layout, taken.item_id).meta
    assert meta.formats == ("messages",) and meta.repeated_records == 2


def test_an_invalid_inbox_file_adds_nothing_to_the_index(layout, tmp_path):
    (layout.inbox / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{oops\n')
    assert ingest(layout, "bad.jsonl", LIMITS).state is ItemState.FAILED
    assert not os.path.exists(layout.index_dir) or not os.listdir(layout.index_dir / "files")


def test_repeats_of_a_batch_count_the_batchs_earlier_files(layout):
    digests = bytes.fromhex("00" * 8 + "01" * 8)
    with seen.SeenIndex(layout) as index:
        assert index.repeats(digests) == seen.Repeats(earlier=0, within=0)
        assert index.repeats(digests + digests[:8]) == seen.Repeats(earlier=3, within=0)
        assert index.repeats(None) is None


def test_a_file_queued_many_times_names_only_its_newest_copies(layout, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [chat(1)])
    ids = [enqueue(layout, data, limits=LIMITS).id for _ in range(6)]
    queued = enqueue_batch(layout, [data], limits=LIMITS)[0]
    assert queued.duplicates == tuple((item_id, "pending") for item_id in reversed(ids[-3:]))
