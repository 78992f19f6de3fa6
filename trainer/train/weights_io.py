"""The engine's weights and optimizer state to and from a checkpoint directory, in either format.

- **Whole** (one process, or data-parallel ranks that each hold the whole model): the leader
  writes ``trainable.safetensors`` (a valid HF ``model.safetensors`` for a full fine-tune, so a
  version can hard-link it) and ``optimizer.pt``.
- **Sharded** (``distributed.strategy = "fsdp"``, ``sharding.py``): every rank writes its shard
  with ``torch.distributed.checkpoint``; ``.metadata`` indexes them.

Either loads into either: a whole model reads every shard itself; sharded ranks take a whole
checkpoint from rank 0, which reads it and broadcasts. The checkpoint store around these
(manifest, hashes, verification, fallback) is the same for both (``checkpoint.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trainer.errors import ConfigError, ItemFailed
from trainer.spool.fsutil import FILE_MODE
from trainer.train.world import place

if TYPE_CHECKING:
    from trainer.train.engine import Engine

WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


def write_whole(engine: Engine, directory: Path) -> None:
    from safetensors.torch import save_file

    # format=pt: for full fine-tuning this file is a valid HF model.safetensors, so a
    # snapshot can hard-link it instead of writing the weights again.
    save_file({name: p.detach().contiguous().cpu() for name, p in engine.params.items()},
              str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    # safetensors creates its file 0600; a version hard-links it, and the group must read it.
    os.chmod(directory / WEIGHTS_FILE, FILE_MODE)
    torch.save(engine.optimizer.state_dict(), directory / OPTIMIZER_FILE)


def save_shards(engine: Engine, directory: Path) -> None:
    """Every sharded rank: its shard of the weights and optimizer state into the checkpoint
    being written, unless some rank holds a weight that is not finite (then none writes)."""
    from trainer.train import sharding

    if engine.world.any(not sharding.finite(engine.params.values())):
        raise ItemFailed("refusing to checkpoint non-finite weights", transient=True)
    sharding.save(engine.model, engine.optimizer, directory)


def load_whole(engine: Engine, path: Path) -> None:
    """A checkpoint's weights and optimizer state into a model this process holds whole."""
    from trainer.train import sharding

    if sharding.holds_shards(path):  # written by sharded ranks: read every shard here
        return sharding.load(engine.model, engine.optimizer, path, alone=True)
    weights, optimizer = _read_whole(engine, path)
    with torch.no_grad():
        for name, p in engine.params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    engine.optimizer.load_state_dict(optimizer)


def _read_whole(engine: Engine, path: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    weights = load_file(str(path / WEIGHTS_FILE))
    missing = set(engine.params) - set(weights)
    if missing:
        raise RuntimeError(f"checkpoint {path.name} lacks {len(missing)} trained tensors "
                           f"(was it made with another model or LoRA setting?)")
    return weights, torch.load(path / OPTIMIZER_FILE, weights_only=True, map_location="cpu")


def share_shards(engine: Engine, source: Path | None) -> None:
    """Leader, sharded: every rank (itself too) takes its shard of checkpoint ``source``, or
    keeps the weights the model files gave every rank alike (None)."""
    probe = f".ranks-{os.urandom(4).hex()}"
    (engine.store.root / probe).touch()
    try:
        named = None if source is None else str(source)
        engine.leader.tell("load", engine.state.base, engine.state.micro_batch_size, named, probe)
        take_shards(engine, named, probe)
    finally:
        (engine.store.root / probe).unlink(missing_ok=True)


def take_shards(engine: Engine, source: str | None, probe: str) -> None:
    """Every sharded rank, after (re)loading the model: its shard of checkpoint ``source``
    (sharded or whole; None: as loaded). ``probe``: a file the leader put in the checkpoint
    directory, which every rank must see, since each writes its shards there."""
    from trainer.train import sharding

    seen = engine.world.gather((place(), (engine.store.root / probe).exists()))
    engine.leader.places = [where for where, _ in seen]
    blind = [rank for rank, (_, ok) in enumerate(seen) if not ok]
    if blind:
        raise ConfigError(f"distributed.strategy = \"fsdp\": rank(s) {blind} cannot see {engine.store.root}, where "
                          f"every rank writes its shards: put the base dir on a filesystem every node mounts at "
                          f"the same path, or use strategy = \"ddp\"")
    if source is None:
        return
    if sharding.holds_shards(Path(source)):
        return sharding.load(engine.model, engine.optimizer, Path(source), alone=False)
    weights, optimizer = _read_whole(engine, Path(source)) if engine.world.is_leader else ({}, {})
    sharding.load_full(engine.model, engine.optimizer, weights, optimizer, list(engine.params))


def full_weights(engine: Engine) -> dict[str, torch.Tensor]:
    """Sharded: every weight whole on the leader's CPU, for a publication (every rank takes part)."""
    from trainer.train import sharding

    if engine.world.is_leader:
        engine.leader.tell("gather")
    return sharding.full_weights(engine.model)
