"""The engine on the real tiny model: items, non-finite losses, out-of-memory, zero-token files."""

from __future__ import annotations

import hashlib
import shutil

import pytest

torch = pytest.importorskip("torch")

from trainer.config import CheckpointConfig, Config, TrainConfig  # noqa: E402
from trainer.demo.sample_data import write_sample_chat  # noqa: E402
from trainer.train import step as step_module  # noqa: E402
from trainer.train.engine import Engine, ItemFailed  # noqa: E402


@pytest.fixture
def base(tmp_path, demo_model):
    shutil.copytree(demo_model, tmp_path / "models" / "base")
    return tmp_path


def _config(**train) -> Config:
    defaults = dict(max_length=128, micro_batch_size=4, grad_accum_steps=1, learning_rate=1e-3, warmup_steps=0,
                    deterministic=True)
    return Config(train=TrainConfig(**{**defaults, **train}), checkpoint=CheckpointConfig(every_steps=3))


def _plan(engine, path, item_id="item"):
    return engine.prepare(item_id, hashlib.sha256(path.read_bytes()).hexdigest(), path)


def _weights(engine):
    return {name: p.detach().clone() for name, p in engine.params.items()}


def test_an_item_trains_and_the_loss_goes_down(base):
    engine = Engine(base, _config())
    engine.start()
    data = write_sample_chat(base / "d.jsonl", 300, seed=1)
    plan = _plan(engine, data)
    # The token statistics count the training share; the held-out share is left for evaluation.
    assert plan.stats["examples"] + plan.stats["held_out"] == 300 and plan.stats["held_out"] > 0
    assert plan.total_steps > 5
    losses = []
    assert engine.train(plan, lambda p: losses.append(p.loss) or True)
    assert len(losses) == plan.total_steps and losses[-1] < losses[0]
    assert engine.state.cursor is None and engine.state.last_completed["item_id"] == "item"


def test_continuous_training_carries_weights_and_optimizer_across_items(base):
    engine = Engine(base, _config())
    engine.start()
    first = _plan(engine, write_sample_chat(base / "a.jsonl", 60, seed=1), "a")
    engine.train(first, lambda p: True)
    steps, state = engine.state.global_step, engine.optimizer.state_dict()["state"]
    assert state, "optimizer moments exist after the first item"
    engine.train(_plan(engine, write_sample_chat(base / "b.jsonl", 60, seed=2), "b"), lambda p: True)
    assert engine.state.global_step > steps
    reloaded = Engine(base, _config())
    assert reloaded.start().step == engine.state.global_step


def test_a_file_with_nothing_to_learn_fails_permanently(base):
    engine = Engine(base, _config(max_length=16, overlong="truncate"))
    engine.start()
    data = base / "long.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "' + "river stone " * 50 +
                    '"}, {"role": "assistant", "content": "ok"}]}\n')
    with pytest.raises(ItemFailed) as caught:
        _plan(engine, data)
    assert not caught.value.transient and "zero tokens" in caught.value.reason


def test_non_finite_losses_skip_steps_then_fail_the_item_and_roll_back(base, monkeypatch):
    engine = Engine(base, _config(max_nonfinite_steps=3))
    engine.start()
    plan = _plan(engine, write_sample_chat(base / "d.jsonl", 300, seed=1))
    real = step_module.summed_loss
    seen = []

    def poisoned(logits, labels):
        loss = real(logits, labels)
        return loss * float("nan") if len(seen) >= 4 else loss

    monkeypatch.setattr(step_module, "summed_loss", poisoned)
    saved = {}

    def step(progress):
        seen.append(progress)
        if progress.checkpointed:
            saved.update(_weights(engine))
        return True

    with pytest.raises(ItemFailed) as caught:
        engine.train(plan, step)
    assert caught.value.transient and "not finite for 3 steps" in caught.value.reason
    # The third bad step fails the item before it is reported; the two before were skipped.
    assert [p.skipped for p in seen[-3:]] == [False, True, True]
    for name, value in _weights(engine).items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, saved[name]), "rolled back to the last checkpoint"


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_batch(base, monkeypatch):
    reference = Engine(base, _config(micro_batch_size=2, grad_accum_steps=4))
    reference.start()
    plan = _plan(reference, write_sample_chat(base / "d.jsonl", 120, seed=1))
    reference.train(plan, lambda p: True)
    expected = _weights(reference)

    shutil.rmtree(base / "checkpoints")
    engine = Engine(base, _config(micro_batch_size=8, grad_accum_steps=1))
    engine.start()
    real = step_module.forward_packed
    ooms = []

    def small_gpu(model, ids, positions):
        if ids.shape[0] > 2:
            ooms.append(ids.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, ids, positions)

    monkeypatch.setattr(step_module, "forward_packed", small_gpu)
    engine.train(_plan(engine, base / "d.jsonl"), lambda p: True)
    assert ooms == [8, 4], "halved twice, then remembered"
    assert engine.state.micro_batch_size == 2
    for name, value in _weights(engine).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5)


def test_out_of_memory_at_micro_batch_one_fails_the_item(base, monkeypatch):
    engine = Engine(base, _config(micro_batch_size=1))
    engine.start()

    def no_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(step_module, "forward_packed", no_memory)
    with pytest.raises(ItemFailed) as caught:
        engine.train(_plan(engine, write_sample_chat(base / "d.jsonl", 20, seed=1)), lambda p: True)
    assert caught.value.transient and "micro-batch 1" in caught.value.reason


def test_a_finished_item_is_not_trained_twice_after_a_crash(base):
    engine = Engine(base, _config())
    engine.start()
    plan = _plan(engine, write_sample_chat(base / "d.jsonl", 40, seed=1))
    engine.train(plan, lambda p: True)
    again = Engine(base, _config())
    again.start()
    steps = []
    assert again.train(_plan(again, base / "d.jsonl"), lambda p: steps.append(p) or True)
    assert steps == [], "the checkpoint already holds this item: no example is seen twice"


def test_stopping_after_a_step_checkpoints_the_cursor(base):
    engine = Engine(base, _config())
    engine.start()
    plan = _plan(engine, write_sample_chat(base / "d.jsonl", 200, seed=1))
    assert engine.train(plan, lambda p: p.step < 2) is False
    resumed = Engine(base, _config())
    checkpoint = resumed.start()
    assert checkpoint.step == 2 and resumed.state.cursor["item_step"] == 2


def test_lora_trains_only_the_adapter_and_resumes(base):
    from trainer.config import ModelConfig

    config = Config(model=ModelConfig(lora=True, lora_rank=4, lora_alpha=8.0),
                    train=_config(learning_rate=1e-2).train, checkpoint=CheckpointConfig(every_steps=2))
    engine = Engine(base, config)
    engine.start()
    assert engine.params and all("lora_" in name for name in engine.params)
    frozen = {n: p.detach().clone() for n, p in engine.model.named_parameters() if not p.requires_grad}
    plan = _plan(engine, write_sample_chat(base / "d.jsonl", 120, seed=1))
    losses = []
    assert engine.train(plan, lambda p: losses.append(p.loss) or p.step < 3) is False
    for name, p in engine.model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), "base weights never change under LoRA"
    checkpoint = engine.last_checkpoint
    assert (checkpoint.path / "trainable.safetensors").stat().st_size < 200_000, "only the adapter is saved"
    resumed = Engine(base, config)
    assert resumed.start().step == 3
    for name, p in resumed.params.items():
        assert torch.equal(p, engine.params[name])
    assert resumed.train(_plan(resumed, base / "d.jsonl"), lambda p: losses.append(p.loss) or True)
    assert losses[-1] < losses[0]


def test_every_step_is_reported_and_written_to_the_item_metrics_file(base):
    import orjson

    engine = Engine(base, _config())
    engine.start()
    plan = _plan(engine, write_sample_chat(base / "d.jsonl", 100, seed=1), "metrics-item")
    seen = []
    engine.train(plan, lambda p: seen.append(p) or True)
    lines = [orjson.loads(line) for line in (base / "metrics" / "metrics-item.jsonl").read_bytes().splitlines()]
    *lines, evaluation = lines  # the item's held-out evaluation comes last, marked with its kind
    assert evaluation["kind"] == "eval" and evaluation["step"] == engine.state.global_step
    assert evaluation == {**evaluation, **{k: v for k, v in engine.state.last_eval.items() if k in evaluation}}
    assert all("kind" not in line for line in lines)
    assert [line["step"] for line in lines] == [p.step for p in seen] == list(range(1, plan.total_steps + 1))
    last = lines[-1]
    for key in ("loss", "smoothed_loss", "lr", "grad_norm", "tokens_per_s", "eta_s", "host_rss_bytes"):
        assert last[key] is not None, key
    assert last["eta_s"] == 0 and last["host_rss_bytes"] > 10_000_000


def test_epochs_per_item_pass_over_the_data_again(base):
    once = Engine(base, _config())
    once.start()
    data = write_sample_chat(base / "d.jsonl", 60, seed=1)
    steps_once = _plan(once, data).total_steps
    shutil.rmtree(base / "checkpoints")
    twice = Engine(base, _config(epochs_per_item=2))
    twice.start()
    plan = _plan(twice, data)
    assert plan.total_steps == 2 * steps_once
    seen = []
    twice.train(plan, lambda p: seen.append(p.step) or True)
    assert seen == list(range(1, 2 * steps_once + 1))
