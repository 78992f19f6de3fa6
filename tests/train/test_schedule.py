"""Learning rate and checkpoint cadence: pure functions of the training state."""

from __future__ import annotations

import pytest

from trainer.config import CheckpointConfig, TrainConfig
from trainer.train.schedule import lr_at, should_checkpoint


def test_warmup_counts_over_the_whole_life_then_stays_constant():
    config = TrainConfig(learning_rate=1e-3, warmup_steps=10)
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    # A thousand items later the rate has not decayed towards zero.
    assert lr_at(10, config) == lr_at(10**6, config) == 1e-3


def test_cosine_per_item_decays_within_an_item_and_starts_again():
    config = TrainConfig(learning_rate=1e-3, warmup_steps=0, schedule="cosine-per-item", min_lr_ratio=0.1)
    assert lr_at(500, config, item_step=0, item_steps=11) == pytest.approx(1e-3)
    assert lr_at(505, config, item_step=5, item_steps=11) == pytest.approx(0.55e-3)
    assert lr_at(510, config, item_step=10, item_steps=11) == pytest.approx(1e-4)
    assert lr_at(511, config, item_step=0, item_steps=7) == pytest.approx(1e-3), "next item starts high"


def test_checkpoints_every_n_steps_or_t_minutes():
    by_steps = CheckpointConfig(every_steps=100, every_minutes=0)
    assert not should_checkpoint(99, 10**6, by_steps) and should_checkpoint(100, 0, by_steps)
    by_time = CheckpointConfig(every_steps=0, every_minutes=30)
    assert not should_checkpoint(5, 1799, by_time) and should_checkpoint(5, 1800, by_time)
    assert not should_checkpoint(0, 10**6, by_time), "nothing new to save"
