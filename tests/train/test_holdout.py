"""The held-out share: chosen by a hash of each record, never trained on, the same after a resume."""

from __future__ import annotations

import random

import orjson
import pytest

pytest.importorskip("torch")

from trainer.demo.sample_data import record, write_sample_chat  # noqa: E402
from trainer.train.data import Cursor, HeldOut, RowStream, survey  # noqa: E402
from trainer.train.evalsets import holdout_records, is_held_out, record_key, training_keys  # noqa: E402
from trainer.train.examples import RecordEncoder  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)


def test_the_key_is_the_record_not_its_spelling():
    a = {"prompt": "2+2?", "completion": "4"}
    assert record_key(a) == record_key(orjson.loads('{ "completion":"4",  "prompt": "2+2?" }'))
    assert record_key(a) != record_key({"prompt": "2+2?", "completion": "5"})


def test_the_share_is_close_to_the_fraction_and_nothing_at_zero():
    rng = random.Random(3)
    keys = [record_key({"text": f"{rng.random()}"}) for _ in range(20000)]
    share = sum(is_held_out(k, 0.02) for k in keys) / len(keys)
    assert 0.015 < share < 0.025
    assert not any(is_held_out(k, 0.0) for k in keys)
    assert all(is_held_out(k, 0.02) <= is_held_out(k, 0.1) for k in keys), "a larger share contains the smaller"


def test_held_out_records_never_reach_the_rows_and_a_resume_yields_the_same_rows(tokenizer, tmp_path):
    path = write_sample_chat(tmp_path / "d.jsonl", 200, seed=11)
    encoder = RecordEncoder(tokenizer, max_length=128)
    pad = tokenizer.pad_token_id
    held_records = holdout_records(path, 0.2)
    assert 20 < len(held_records) < 60
    held = HeldOut()
    stats, _, cached = survey(path, encoder, 128, pad, holdout=0.2, held=held)
    assert held.records == len(held_records) and stats.examples == 200 - len(held_records)
    assert len(cached) == 200, "one entry per record: the cursor counts lines, held out or not"

    whole = RowStream(path, encoder, Cursor("i", "s", holdout=0.2), 128, pad).take(10_000)
    trained = [tuple(r.input_ids[: r.content_length]) for r in whole]
    for rec in held_records:
        ids = encoder.encode(rec)[0].input_ids
        assert not any(_contains(row, ids) for row in trained), "a held-out record was trained on"
    expected = [r.input_ids for r in whole]
    for examples in (None, cached):
        cursor = Cursor("i", "s", holdout=0.2)
        rows = [r.input_ids for r in RowStream(path, encoder, cursor, 128, pad, examples).take(4)]
        resumed = Cursor.from_json(orjson.loads(orjson.dumps(cursor.to_json())))
        rows += [r.input_ids for r in RowStream(path, encoder, resumed, 128, pad, examples).take(10_000)]
        assert rows == expected


def test_a_checkpoint_cursor_from_before_evaluation_holds_nothing_out():
    old = {"item_id": "i", "sha256": "s", "epoch": 0, "records_done": 3, "packer": None, "pending_rows": [],
           "item_step": 1, "rows_per_epoch": 4, "total_steps": 4}
    assert Cursor.from_json(old).holdout == 0.0


def test_duplicates_fall_on_one_side_so_the_holdout_is_never_also_trained_on(tmp_path):
    rng = random.Random(2)
    records = [record(rng) for _ in range(300)]
    path = tmp_path / "dup.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records + records))
    held = {record_key(r) for r in holdout_records(path, 0.1)}
    assert held and not held & training_keys(path, 0.1)


def _contains(row: tuple, ids: list[int]) -> bool:
    n = len(ids)
    return any(row[i:i + n] == tuple(ids) for i in range(len(row) - n + 1))


def test_eval_records_that_training_data_holds_are_left_out_and_counted(tokenizer, tmp_path):
    """Contamination: scored, they would flatter the model; they are counted instead, both when
    the item is surveyed and in the eval set's numbers."""
    from trainer.config import Config, SpoolConfig
    from trainer.intake import enqueue
    from trainer.spool import queue
    from trainer.spool.layout import init_base
    from trainer.train import release_eval

    layout, _ = init_base(tmp_path / "base", "")
    rng = random.Random(4)
    train = [record(rng) for _ in range(120)]
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in train))
    trained = [r for r in train if not is_held_out(record_key(r), 0.02)]
    general = trained[:7] + [record(random.Random(99)) for _ in range(20)]
    (layout.eval_dir / "general.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in general))

    held = HeldOut()
    survey(data, RecordEncoder(tokenizer, max_length=128), 128, tokenizer.pad_token_id, holdout=0.02,
           eval_keys=frozenset(record_key(r) for r in general), held=held)
    assert held.in_eval_sets == 7

    item = enqueue.enqueue(layout, data, limits=SpoolConfig())
    queue.claim_next(layout)
    queue.set_tokens(layout, item.id, {"holdout_fraction": 0.02})
    queue.complete(layout, item.id)
    sets = {s.name: s for s in release_eval.eval_sets(layout.root, Config())}
    assert sets["general"].contaminated == 7 and len(sets["general"].records) == 20
    assert {record_key(r) for r in sets["general"].records}.isdisjoint(record_key(r) for r in trained)
    assert sets["holdout"].records == holdout_records(data, 0.02) and sets["holdout"].contaminated == 0
