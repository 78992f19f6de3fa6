"""Sharded training (``distributed.strategy = "fsdp"``): torch's FSDP2 over the ranks.

Each decoder block, then the whole model, is wrapped with ``fully_shard``: every rank holds
1/N of the weights, of their gradients and of the optimizer state, and a block's weights are
gathered only while it runs. What changes for the rest of the engine, and why:

- Gradients are reduce-scattered during every backward pass, so a step's collectives happen
  *inside* the micro-batches: every rank must run the same number of them. A rank with fewer
  rows pads its share with filler rows that carry no targets (``padded``). An out-of-memory
  error can no longer be agreed on after the micro-batches (a rank that stopped half-way has
  left the others inside a collective): it ends the group, which restarts from the last
  checkpoint.
- The reductions are sums, forced on every wrapped module: the loss is already normalised by
  the step's global target count (``world.py``), and averaging over gloo has had a silent
  bug (pytorch issue 162338).
- A checkpoint is written by every rank: ``torch.distributed.checkpoint`` puts each rank's
  shard in its own file beside ``.metadata`` (written by rank 0 once every rank has written),
  all inside the checkpoint's staging directory, which the store then hashes file by file
  into the manifest like any other. So a corrupt shard fails the leader's verification and
  every rank falls back to the same earlier checkpoint. The directory must be one every rank
  can reach (one node, or a base dir shared at the same path).
- Checkpoints load across strategies: a sharded one into a plain model (``no_dist``: one
  process reads every shard), a plain one into a sharded model (rank 0 reads it and the
  tensors are broadcast and sharded).
- The leader's forward passes outside a step (evaluation, sample answers) need every rank:
  ``mirror`` announces each one, and the followers run a one-token forward alongside
  (``follow_forward``), which gathers the same blocks in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from trainer.train.examples import IGNORE
from trainer.train.packing import Row

SHARDS_INDEX = ".metadata"  # torch.distributed.checkpoint's index of the shards


def shard(model: torch.nn.Module, device: torch.device) -> None:
    """Wrap each decoder block (the classes the model names as never to be split), then the model."""
    mesh = DeviceMesh.from_group(dist.group.WORLD, device.type)
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):  # each wrapped module has its own reduction settings
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def holds_shards(directory: Path) -> bool:
    """A checkpoint written by sharded ranks (else: the plain format)."""
    return (directory / SHARDS_INDEX).is_file()


def save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Every rank writes its shard of the weights and optimizer state into ``directory`` (collective)."""
    weights, moments = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optim": moments}, checkpoint_id=str(directory))


def load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path, *, alone: bool) -> None:
    """Weights and optimizer state from a sharded checkpoint: every rank its shard (collective),
    or ``alone`` a plain model reads them all (any number of ranks wrote it)."""
    weights, moments = get_state_dict(model, optimizer)
    dcp.load({"model": weights, "optim": moments}, checkpoint_id=str(directory), no_dist=alone)
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=moments)


def load_full(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optimizer_state: dict,
              names: list[str]) -> None:
    """A plain checkpoint into the sharded model (collective): rank 0 passes the weights and the
    optimizer's ``state_dict()`` (its parameters numbered in the order of ``names``), the others
    empty dicts; rank 0 broadcasts and each rank keeps its shard."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, _by_name(optimizer_state, names), options=options)


def _by_name(state: dict, names: list[str]) -> dict:
    """An optimizer ``state_dict()`` keyed by parameter names instead of numbers."""
    if not state:
        return {}
    return {"state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole, on rank 0's CPU (collective; the other ranks get an empty dict)."""
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return weights if dist.get_rank() == 0 else {}


def finite(params) -> bool:
    """Whether this rank's shards of ``params`` are all finite (no communication)."""
    return all(bool(torch.isfinite(_local(p)).all()) for p in params)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def padded(mine: list[Row], rows_each: int, pad_id: int) -> list[Row]:
    """This rank's rows, then filler rows (no targets, so no loss and no gradient) up to
    ``rows_each``: every rank runs the same micro-batches, hence the same collectives."""
    length = len(mine[0]) if mine else 1
    filler = Row([pad_id] * length, [IGNORE] * length, list(range(length)), padding=length)
    return mine + [filler] * (rows_each - len(mine))


def mirror(model: torch.nn.Module, announce: Callable[[], None]):
    """Call ``announce`` before each forward of ``model`` (the leader's: the followers then run
    one alongside). Returns the hook's handle."""
    return model.register_forward_pre_hook(lambda module, args, kwargs: announce(), prepend=True, with_kwargs=True)


def follow_forward(model: torch.nn.Module, device: torch.device) -> None:
    """A follower's part in one of the leader's forward passes: the same blocks gathered in the
    same order, on a one-token input."""
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
