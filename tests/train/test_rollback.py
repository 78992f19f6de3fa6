"""Rollback at the engine: a new line from a version's weights, full fine-tune and LoRA, and
the demo model's generation stopping at the end of a chat turn."""

from __future__ import annotations

import hashlib
import shutil

import pytest

torch = pytest.importorskip("torch")

from trainer.config import CheckpointConfig, Config, ModelConfig, TrainConfig  # noqa: E402
from trainer.demo.sample_data import write_sample_chat  # noqa: E402
from trainer.spool import versions  # noqa: E402
from trainer.train import releases  # noqa: E402
from trainer.train.engine import Engine  # noqa: E402

IDS = torch.tensor([[1, 5, 9, 12, 40]])


@pytest.fixture
def base(tmp_path, demo_model):
    shutil.copytree(demo_model, tmp_path / "models" / "base")
    return tmp_path


def _engine(base, lora=False) -> Engine:
    config = Config(model=ModelConfig(lora=lora, lora_rank=4, lora_alpha=8.0),
                    train=TrainConfig(max_length=128, micro_batch_size=4, learning_rate=1e-2 if lora else 1e-3,
                                      warmup_steps=0),
                    checkpoint=CheckpointConfig(every_steps=1000))
    engine = Engine(base, config)
    engine.start()
    return engine


def _train(engine, base, name, seed):
    data = write_sample_chat(base / f"{name}.jsonl", 24, seed=seed)
    engine.train(engine.prepare(name, hashlib.sha256(data.read_bytes()).hexdigest(), data), lambda p: True)


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_training_continues_from_the_version_rolled_back_to_and_a_restart_stays_there(base, lora):
    engine = _engine(base, lora)
    _train(engine, base, "a", 1)
    v1 = releases.consolidate(engine, base / "models", keep_versions=0)
    _train(engine, base, "b", 2)
    _train(engine, base, "c", 3)
    releases.consolidate(engine, base / "models", keep_versions=0)
    models = base / "models"
    after = versions.items_after(models, "v001", engine.state.version, engine.state.lineage)
    assert [i["id"] for i in after] == ["b", "c"]
    meta = versions.read(models, "v001")
    request = {"id": "r1", "version": "v001"}
    engine.continue_from("v001", meta, request, after)
    expected = _logits(_load(v1))
    torch.testing.assert_close(_logits(engine.model), expected, atol=1e-4, rtol=1e-4)
    assert engine.state.global_step == meta["global_step"] and engine.state.version == "v001"
    assert engine.state.line == 1 and engine.state.rollback["requeue"] == after and engine.state.lineage == []
    # The rollback's checkpoint is the newest although its step is lower than the old line's.
    restarted = _engine(base, lora)
    assert restarted.state.line == 1 and restarted.state.rollback["id"] == "r1"
    torch.testing.assert_close(_logits(restarted.model), expected, atol=1e-4, rtol=1e-4)
    assert versions.names(models) == ["v001", "v002"], "later versions stay"
    _train(restarted, base, "d", 4)
    v3 = releases.consolidate(restarted, models, keep_versions=0)
    meta3 = versions.read(models, v3.name)
    assert meta3["parent"] == "v001" and [i["id"] for i in meta3["lineage"]["items"]] == ["d"]
    assert meta3["lineage"]["steps"][0] == meta["global_step"] + 1


def test_items_after_a_version_on_another_line_are_those_since_the_lines_met(base):
    engine = _engine(base)
    for n, name in enumerate("ab"):
        _train(engine, base, name, n)
        releases.consolidate(engine, base / "models", keep_versions=0)  # v001 (a), v002 (b)
    engine.continue_from("v001", versions.read(base / "models", "v001"), {"id": "r"}, [])
    _train(engine, base, "c", 5)
    releases.consolidate(engine, base / "models", keep_versions=0)  # v003 (c), parent v001
    _train(engine, base, "d", 6)  # not yet in a version
    after = versions.items_after(base / "models", "v002", engine.state.version, engine.state.lineage)
    assert [i["id"] for i in after] == ["c", "d"]


def test_the_demo_model_stops_generating_at_the_end_of_a_chat_turn(demo_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model).eval()
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert end in model.generation_config.eos_token_id

    class EndAfterThree(LogitsProcessor):
        """Makes the model say three tokens, then <|end|>, as a trained one ends its answer."""

        def __init__(self, start):
            self.start = start

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - self.start >= 3:
                scores[:, :] = -float("inf")
                scores[:, end] = 0.0
            return scores

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    start = prompt["input_ids"].shape[1]
    out = model.generate(**prompt, max_new_tokens=40, do_sample=False,
                         logits_processor=LogitsProcessorList([EndAfterThree(start)]))
    assert out.shape[1] == start + 4 and out[0, -1].item() == end, "stopped at <|end|>, not at max_new_tokens"
