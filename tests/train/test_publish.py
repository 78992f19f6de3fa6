"""Snapshots and consolidation: HF-loadable, verified, hard-linked where possible, never half."""

from __future__ import annotations

import hashlib
import os
import shutil

import orjson
import pytest

torch = pytest.importorskip("torch")

from trainer.config import CheckpointConfig, Config, ModelConfig, TrainConfig  # noqa: E402
from trainer.demo.sample_data import write_sample_chat  # noqa: E402
from trainer.train import releases  # noqa: E402
from trainer.train.engine import WEIGHTS_FILE, Engine  # noqa: E402


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


def _train(engine, base, name="a", records=60, seed=1):
    data = write_sample_chat(base / f"{name}.jsonl", records, seed=seed)
    engine.train(engine.prepare(name, hashlib.sha256(data.read_bytes()).hexdigest(), data), lambda p: True)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True)


def test_a_full_fine_tune_snapshot_is_hard_linked_and_loads(base):
    engine = _engine(base)
    _train(engine, base)
    snap = releases.snapshot(engine, base / "snapshots", "2026-11-28", keep_days=7)
    weights = snap / "model.safetensors"
    assert weights.stat().st_nlink >= 2, "hard-linked to the checkpoint, no extra space"
    assert os.path.samefile(weights, engine.last_checkpoint.path / WEIGHTS_FILE)
    loaded = _load(snap)
    for name, p in engine.model.named_parameters():
        assert torch.equal(loaded.state_dict()[name], p.detach())
    assert releases.snapshot(engine, base / "snapshots", "2026-11-28", keep_days=7) is None, "once a day"
    provenance = orjson.loads((snap / releases.VERSION_FILE).read_bytes())
    assert provenance["global_step"] == engine.state.global_step


def test_snapshot_retention_keeps_the_newest_days(base):
    engine = _engine(base)
    for day in ("2026-11-25", "2026-11-26", "2026-11-27", "2026-11-28"):
        releases.snapshot(engine, base / "snapshots", day, keep_days=2)
    assert sorted(os.listdir(base / "snapshots")) == ["2026-11-27", "2026-11-28"]


def test_a_lora_snapshot_is_the_merged_model_and_the_adapter_alone_both_reproducing_the_model(base):
    from peft import PeftModel

    engine = _engine(base, lora=True)
    _train(engine, base)
    snap = releases.snapshot(engine, base / "snapshots", "2026-11-28", keep_days=7)
    adapter = snap / releases.ADAPTER_DIR
    assert (snap / "model.safetensors").exists() and (adapter / "adapter_model.safetensors").exists()
    ids = torch.tensor([[1, 5, 9, 12]])
    engine.model.eval()
    expected = engine.model(input_ids=ids).logits
    torch.testing.assert_close(_load(snap).eval()(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)
    model = PeftModel.from_pretrained(_load(base / "models" / "base"), adapter).eval()
    torch.testing.assert_close(model(input_ids=ids).logits, expected)
    header = (adapter / "README.md").read_text().split("---")[1]
    assert "library_name: peft" in header and str(base / "models" / "base") in header


def test_lora_consolidation_merges_into_a_new_version_and_training_continues_on_it(base):
    engine = _engine(base, lora=True)
    _train(engine, base)
    ids = torch.tensor([[1, 5, 9, 12]])
    engine.model.eval()
    before = engine.model(input_ids=ids).logits.detach()
    v1 = releases.consolidate(engine, base / "models", keep_versions=5)
    assert v1.name == "v001" and (base / "models" / "LATEST").read_text().strip() == "v001"
    merged = _load(v1).eval()
    torch.testing.assert_close(merged(input_ids=ids).logits, before, atol=1e-4, rtol=1e-4)
    meta = orjson.loads((v1 / releases.VERSION_FILE).read_bytes())
    assert meta["parent"] == "base" and meta["version"] == "v001" and meta["lora"] is True
    assert [i["id"] for i in meta["lineage"]["items"]] == ["a"]
    # Training goes on with a fresh adapter on v001, and a restart finds it there.
    assert engine.state.base == "models/v001"
    engine.model.eval()
    torch.testing.assert_close(engine.model(input_ids=ids).logits, before, atol=1e-4, rtol=1e-4)
    _train(engine, base, "b", seed=2)
    restarted = _engine(base, lora=True)
    assert restarted.state.base == "models/v001" and restarted.model_path == base / "models" / "v001"
    assert (base / "models" / "base" / "model.safetensors").exists(), "never destructive"


def test_full_consolidation_publishes_versions_and_keeps_the_newest(base):
    engine = _engine(base)
    names = []
    for n in range(3):
        _train(engine, base, f"i{n}", records=20, seed=n)
        names.append(releases.consolidate(engine, base / "models", keep_versions=2).name)
    assert names == ["v001", "v002", "v003"]
    assert releases.versions(base / "models") == ["v002", "v003"]
    assert os.path.samefile(base / "models" / "v003" / "model.safetensors",
                            engine.last_checkpoint.path / WEIGHTS_FILE)


def test_an_interrupted_consolidation_leaves_no_half_version(base, monkeypatch):
    engine = _engine(base)

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(releases, "_verify", crash)
    with pytest.raises(RuntimeError):
        releases.consolidate(engine, base / "models", keep_versions=5)
    assert releases.versions(base / "models") == []
    assert not any(n.startswith(releases.STAGING) for n in os.listdir(base / "models"))


def test_consolidation_checks_free_space_first(base, monkeypatch):
    engine = _engine(base, lora=True)

    class Tiny:
        f_bavail, f_frsize = 1, 4096

    monkeypatch.setattr(releases, "free_bytes", lambda path: Tiny.f_bavail * Tiny.f_frsize)
    with pytest.raises(releases.NotEnoughSpace) as caught:
        releases.consolidate(engine, base / "models", keep_versions=5)
    assert "disk: need" in str(caught.value)
    assert releases.versions(base / "models") == []


def _meta(path):
    return orjson.loads((path / releases.VERSION_FILE).read_bytes())


def test_each_version_names_its_parent_and_exactly_the_items_trained_since(base):
    engine = _engine(base)
    _train(engine, base, "a", records=20, seed=1)
    _train(engine, base, "b", records=20, seed=2)
    v1 = releases.consolidate(engine, base / "models", keep_versions=0)
    _train(engine, base, "c", records=20, seed=3)
    v2 = releases.consolidate(engine, base / "models", keep_versions=0)
    first, second = _meta(v1), _meta(v2)
    assert first["parent"] == "base" and second["parent"] == "v001"
    assert [i["id"] for i in first["lineage"]["items"]] == ["a", "b"]
    assert [i["id"] for i in second["lineage"]["items"]] == ["c"]
    a, b = first["lineage"]["items"]
    assert a["first_step"] == 1 and b["first_step"] == a["last_step"] + 1 and b["last_step"] == first["global_step"]
    assert first["lineage"]["steps"] == [1, first["global_step"]]
    assert second["lineage"]["steps"] == [first["global_step"] + 1, second["global_step"]]
    assert all(i["tokens"] > 0 and len(i["sha256"]) == 64 for i in first["lineage"]["items"])
    assert first["lineage"]["config_hash"] and first["lineage"]["base"] == "models/base"


def test_consolidating_again_with_nothing_trained_publishes_no_second_version(base):
    engine = _engine(base)
    _train(engine, base, "a", records=20)
    v1 = releases.consolidate(engine, base / "models", keep_versions=0)
    assert releases.consolidate(engine, base / "models", keep_versions=0) == v1
    assert releases.versions(base / "models") == ["v001"]


def test_a_restart_right_after_a_version_was_published_continues_after_it(base):
    # kill -9 after the rename, before the state that follows it was checkpointed: the next
    # start must not publish the same weights again, and the next version's parent is v001.
    engine = _engine(base)
    _train(engine, base, "a", records=20)
    engine.checkpoint()
    releases.consolidate(engine, base / "models", keep_versions=0)
    restarted = _engine(base)  # restores the checkpoint taken before the publication
    assert restarted.state.version == "v001" and restarted.state.lineage == []
    assert releases.consolidate(restarted, base / "models", keep_versions=0).name == "v001"
    _train(restarted, base, "b", records=20, seed=2)
    assert _meta(releases.consolidate(restarted, base / "models", keep_versions=0))["parent"] == "v001"


def test_published_files_are_group_readable_and_the_card_describes_the_version(base):
    engine = _engine(base)
    _train(engine, base, "a", records=20)
    v1 = releases.consolidate(engine, base / "models", keep_versions=0)
    for path in v1.rglob("*"):
        assert path.stat().st_mode & 0o777 == 0o640, path
    text = (v1 / "README.md").read_text()
    header = text.split("---")[1]
    assert "base_model: \"models/base\"" in header and "library_name: transformers" in header
    assert "Trained since `base` on 1 completed item(s)" in text and "\n| a |" in text
