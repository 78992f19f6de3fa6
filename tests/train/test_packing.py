"""Packing: examples share rows without attending to, or being positioned after, each other."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from trainer.demo.sample_data import record  # noqa: E402
from trainer.train.examples import IGNORE, Example, RecordEncoder  # noqa: E402
from trainer.train.loss import forward_packed, summed_loss  # noqa: E402
from trainer.train.packing import Packer, pack  # noqa: E402


@pytest.fixture(scope="module")
def demo(demo_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(demo_model)


def _examples(tokenizer, n, seed=0, max_length=256):
    encoder = RecordEncoder(tokenizer, max_length=max_length)
    rng = random.Random(seed)
    return [encoder.encode(record(rng))[0] for _ in range(n)]


def _alone(model, example: Example):
    ids = torch.tensor([example.input_ids])
    logits = model(input_ids=ids, use_cache=False).logits
    return summed_loss(logits, torch.tensor([example.labels])).item(), example.target_count


def _packed_losses(model, rows, examples, restart_positions=True):
    """Per-example summed losses read back from the packed rows, in example order."""
    ids = torch.tensor([r.input_ids for r in rows])
    positions = torch.tensor([r.position_ids for r in rows])
    if not restart_positions:
        positions = torch.arange(ids.shape[1]).expand_as(ids)
    logits = forward_packed(model, ids, positions)
    per_token = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), torch.tensor([r.labels for r in rows]).reshape(-1),
        ignore_index=IGNORE, reduction="none").reshape(ids.shape)
    # Find each example's segment: positions restart at 0 where a segment starts.
    segments: dict[tuple, list[tuple[int, int, int]]] = {}
    for r, row in enumerate(rows):
        starts = [t for t, p in enumerate(row.position_ids) if p == 0] + [len(row.position_ids)]
        for start, end in zip(starts, starts[1:]):
            segments.setdefault(tuple(row.input_ids[start:end]), []).append((r, start, end))
    losses = []
    for example in examples:
        r, start, end = segments[tuple(example.input_ids)].pop(0)
        losses.append(per_token[r, start:end].sum().item())
    return losses, logits


def test_packed_batch_loss_equals_the_examples_computed_one_by_one(demo):
    model, tokenizer = demo
    examples = _examples(tokenizer, 24)
    rows = pack(examples, row_length=256, pad_id=tokenizer.pad_token_id)
    assert len(rows) < len(examples), "several examples share a row"
    alone = [_alone(model, e) for e in examples]
    with torch.no_grad():
        packed, _ = _packed_losses(model, rows, examples)
        ids = torch.tensor([r.input_ids for r in rows])
        logits = forward_packed(model, ids, torch.tensor([r.position_ids for r in rows]))
        total = summed_loss(logits, torch.tensor([r.labels for r in rows])).item()
    for (loss, _), got in zip(alone, packed):
        assert got == pytest.approx(loss, rel=1e-5, abs=1e-4)
    targets = sum(count for _, count in alone)
    assert total / targets == pytest.approx(sum(loss for loss, _ in alone) / targets, rel=1e-6)
    per_example_means = [loss / count for loss, count in alone]
    packed_means = [got / count for got, (_, count) in zip(packed, alone)]
    assert sum(packed_means) / len(packed_means) == pytest.approx(sum(per_example_means) / len(per_example_means), rel=1e-5)


def test_without_restarting_positions_the_examples_leak_into_each_other(demo):
    """The control: the check above can fail, and does when packing is done naively."""
    model, tokenizer = demo
    examples = _examples(tokenizer, 24)
    rows = pack(examples, row_length=256, pad_id=tokenizer.pad_token_id)
    alone = [_alone(model, e)[0] for e in examples]
    with torch.no_grad():
        leaky, _ = _packed_losses(model, rows, examples, restart_positions=False)
    assert any(abs(a - b) > 1e-3 for a, b in zip(alone, leaky))


def test_rows_have_fixed_length_and_padding_learns_nothing(demo):
    _, tokenizer = demo
    examples = _examples(tokenizer, 40)
    rows = pack(examples, row_length=128, pad_id=tokenizer.pad_token_id)
    assert all(len(r) == 128 for r in rows)
    assert sum(r.target_count for r in rows) == sum(e.target_count for e in examples)
    for r in rows:
        for token, label in zip(r.input_ids, r.labels):
            if token == tokenizer.pad_token_id:
                assert label == IGNORE


def test_packer_state_round_trip_resumes_identically(demo):
    _, tokenizer = demo
    examples = _examples(tokenizer, 50)
    whole = pack(examples, 128, tokenizer.pad_token_id)
    first = Packer(128, tokenizer.pad_token_id)
    rows = [r for e in examples[:23] for r in first.feed(e)]
    resumed = Packer(128, tokenizer.pad_token_id)
    resumed.restore(first.state())
    rows += [r for e in examples[23:] for r in resumed.feed(e)] + list(resumed.flush())
    assert [r.input_ids for r in rows] == [r.input_ids for r in whole]


def test_chat_loss_covers_assistant_turns_only(demo):
    _, tokenizer = demo
    encoder = RecordEncoder(tokenizer, max_length=256)
    messages = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5."}]
    example, truncated = encoder.encode({"messages": messages})
    learned = [label for label in example.labels if label != IGNORE]
    assert tokenizer.decode(learned) == "5.<|end|>" and not truncated
    prompt, _ = encoder.encode({"prompt": "Say hi: ", "completion": "hi"})
    assert tokenizer.decode([l for l in prompt.labels if l != IGNORE]) == "hi<|eos|>"


def test_prefix_rendering_gives_the_same_mask_without_generation_markers(demo):
    _, tokenizer = demo
    exact = RecordEncoder(tokenizer, max_length=256)
    prefix = RecordEncoder(tokenizer, max_length=256)
    prefix._exact_chat_mask = False
    rng = random.Random(3)
    for _ in range(20):
        rec = record(rng)
        if "messages" in rec:
            assert exact.encode(rec)[0] == prefix.encode(rec)[0]


def test_overlong_examples_are_truncated_or_rejected(demo):
    _, tokenizer = demo
    long = {"text": "river stone " * 200}
    truncated, was = RecordEncoder(tokenizer, max_length=32).encode(long)
    assert was and len(truncated.input_ids) == 32
    rejected, _ = RecordEncoder(tokenizer, max_length=32, overlong="reject").encode(long)
    assert rejected is None


def test_first_fit_fills_the_gaps_long_examples_leave():
    def ex(n):
        return Example(list(range(1, n + 1)), [IGNORE] * (n - 1) + [IGNORE])

    rows = pack([ex(200), ex(100), ex(50), ex(6)], row_length=256, pad_id=0)
    assert [r.content_length for r in rows] == [256, 100], "200 + 50 + 6 share a row; 100 waits for more"


def test_a_resumed_stream_yields_the_same_rows_from_the_cache_or_the_file(demo, tmp_path):
    from trainer.demo.sample_data import write_sample_chat
    from trainer.train.data import Cursor, RowStream, survey

    _, tokenizer = demo
    encoder = RecordEncoder(tokenizer, max_length=128)
    path = write_sample_chat(tmp_path / "d.jsonl", 80, seed=5)
    _, _, cached = survey(path, encoder, 128, tokenizer.pad_token_id)
    whole = RowStream(path, encoder, Cursor("i", "s"), 128, tokenizer.pad_token_id)
    expected = [r.input_ids for r in whole.take(1000)]
    for examples in (None, cached):
        cursor = Cursor("i", "s")
        first = RowStream(path, encoder, cursor, 128, tokenizer.pad_token_id, examples)
        rows = [r.input_ids for r in first.take(5)]
        resumed = Cursor.from_json(cursor.to_json())
        rows += [r.input_ids for r in RowStream(path, encoder, resumed, 128, tokenizer.pad_token_id, examples).take(1000)]
        assert rows == expected


def test_rows_flattened_for_the_flash_kernels_keep_every_example_apart(demo, monkeypatch):
    """flash_attention_2/3 separate packed examples only in one sequence: forward_packed feeds
    them the rows as one and gives the logits back as rows. The layout is checked here on the
    CPU's sdpa (which separates examples in any layout): each example's loss as alone."""
    from trainer.train import loss

    model, tokenizer = demo
    examples = _examples(tokenizer, 12, seed=5)
    rows = pack(examples, row_length=256, pad_id=tokenizer.pad_token_id)
    alone = [_alone(model, e) for e in examples]
    with torch.no_grad():
        rowwise, logits_rows = _packed_losses(model, rows, examples)
        monkeypatch.setattr(loss, "wants_flat_rows", lambda model: True)
        flat, logits_flat = _packed_losses(model, rows, examples)
    assert logits_flat.shape == logits_rows.shape
    for (expected, _), got in zip(alone, flat):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-4)
    assert torch.allclose(logits_flat, logits_rows, atol=1e-4)


def test_on_a_gpu_the_engine_picks_a_kernel_that_builds_no_dense_mask(monkeypatch):
    from trainer.train import attention

    installed: set[str] = set()
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: object() if name in installed else None)
    assert attention.implementation("cpu") == "sdpa"  # no flex backward, no flash kernels on the CPU
    assert attention.implementation("cuda") == "flex_attention"
    installed.add("flash_attn")
    assert attention.implementation("cuda") == "flash_attention_2"
    installed.add("flash_attn_interface")
    assert attention.implementation("cuda") == "flash_attention_3"
    assert attention.implementation("cuda", "sdpa") == "sdpa"  # model.attention overrides


def test_a_model_loaded_by_the_engine_uses_the_chosen_kernel_and_the_layout_follows(demo_model, tmp_path):
    import shutil

    from trainer.config import ModelConfig
    from trainer.train import model as model_io
    from trainer.train.attention import wants_flat_rows

    shutil.copytree(demo_model, tmp_path / "models" / "base")
    loaded = model_io.load(tmp_path, ModelConfig(device="cpu"))
    assert loaded.model.config._attn_implementation == "sdpa" and not wants_flat_rows(loaded.model)
    eager = model_io.load(tmp_path, ModelConfig(device="cpu", attention="eager"))
    assert eager.model.config._attn_implementation == "eager"


def test_a_survey_calls_its_tick_every_few_hundred_records(demo, tmp_path):
    """The daemon feeds the watchdog from the tick: a large item's survey takes minutes."""
    from trainer.demo.sample_data import write_sample_chat
    from trainer.train.data import TICK_RECORDS, survey

    _, tokenizer = demo
    path = write_sample_chat(tmp_path / "d.jsonl", 2 * TICK_RECORDS + 1, seed=6)
    ticks = []
    survey(path, RecordEncoder(tokenizer, max_length=128), 128, tokenizer.pad_token_id, tick=lambda: ticks.append(1))
    assert len(ticks) == 3  # at records 0, TICK_RECORDS and 2 * TICK_RECORDS
