"""Learning rate and checkpoint cadence: small pure functions of the training state."""

from __future__ import annotations

import math

from trainer.config import CheckpointConfig, TrainConfig


def lr_at(global_step: int, config: TrainConfig, item_step: int = 0, item_steps: int = 0) -> float:
    """The learning rate for the optimizer step that follows ``global_step`` steps.

    Warm-up counts steps over the model's whole life, so a restart or a new item never warms
    up again. After it the rate is constant; continuous training must not decay towards zero
    as items accumulate. ``cosine-per-item`` decays within an item only.
    """
    peak = config.learning_rate
    if config.warmup_steps and global_step < config.warmup_steps:
        return peak * (global_step + 1) / config.warmup_steps
    if config.schedule == "cosine-per-item" and item_steps > 1:
        progress = min(1.0, item_step / (item_steps - 1))
        floor = peak * config.min_lr_ratio
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return peak


def should_checkpoint(steps_since: int, seconds_since: float, config: CheckpointConfig) -> bool:
    """Save now? Every N optimizer steps and/or every T minutes (both measured since the last
    save, with a monotonic clock, so a wall-clock jump neither forces nor skips a save)."""
    if steps_since <= 0:
        return False
    if config.every_steps and steps_since >= config.every_steps:
        return True
    return bool(config.every_minutes) and seconds_since >= config.every_minutes * 60
