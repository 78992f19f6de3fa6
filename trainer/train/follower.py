"""A follower rank: trains on the shares of each step the leader posts, nothing else.

Followers read no data, write nothing to disk and take no decision: every choice (which
item, when to stop, skip or pause, when to checkpoint) is the leader's, and reaches them as
the next command. They hold the same weights and optimizer state as the leader because they
start from the leader's (``Leader.share``) and then apply the same summed
gradients at every step.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trainer.errors import ItemFailed
from trainer.train import step, weights_io
from trainer.train.engine import Engine, seed_everything
from trainer.train.world import place

log = logging.getLogger("trainer.follower")


def follow(engine: Engine) -> int:
    """Serve the leader's commands until it says stop; returns the optimizer steps taken."""
    seed_everything(engine.config.train)
    steps = 0
    while True:
        command = engine.world.receive()
        kind = command[0]
        if kind == "step":
            _, mine, targets, lr, step_no, rows_each = command
            try:
                step.apply_step(engine, mine, targets, lr, step_no, rows_each)
            except ItemFailed as exc:  # out of memory at micro-batch 1: decided on every rank at once
                log.warning("rank %d: %s (the leader decides what comes next)", engine.world.rank, exc)
                continue
            steps += 1
        elif kind == "load":
            _, base, micro_batch_size, *sharded = command
            _load(engine, base, sharded)
            engine.state.micro_batch_size = micro_batch_size
        elif kind == "save":  # sharded: this rank's part of the checkpoint the leader is writing
            try:
                weights_io.save_shards(engine, Path(command[1]))
            except Exception as exc:  # the leader saw it too (the save is collective) and decides
                log.warning("rank %d: checkpoint shard not written: %s", engine.world.rank, exc)
        elif kind == "gather":  # sharded: the leader publishes the whole weights
            weights_io.full_weights(engine)
        elif kind == "forward":  # sharded: the leader runs a forward pass of its own
            from trainer.train.sharding import follow_forward  # FSDP's modules: sharded ranks only

            follow_forward(engine.model, engine.device)
        elif kind == "alive":  # the leader is idle or paused: nothing to do, the group lives on
            continue
        elif kind == "stop":
            return steps
        else:
            raise RuntimeError(f"rank {engine.world.rank}: unknown command from the leader: {kind!r}")


def _load(engine: Engine, base: str | None, sharded: list) -> None:
    """The leader's model (the configured one, or the base a consolidation moved to), then
    its weights and optimizer state (sharded: this rank's shard of the checkpoint named)."""
    if getattr(engine, "model", None) is None or engine.state.base != base:
        engine._load_model(_loadable(engine, base))
        engine.state.base = base
    if sharded:
        source, probe = sharded
        return weights_io.take_shards(engine, source, probe)
    engine.world.share_tensors(engine.params.values())
    engine.optimizer.load_state_dict(engine.world.share())
    engine.leader.places = engine.world.gather(place())


def _loadable(engine: Engine, base: str | None) -> str | None:
    """The model to load for ``base``. A node other than the leader's has no ``models/`` of
    its own: a full fine-tune then loads the configured model, whose every weight the leader
    overwrites at once (a LoRA base must be there: docs/operations.md#distributed-training)."""
    if base is not None and not engine.is_lora and not (engine.base / base).exists():
        return None
    return base
