"""One optimizer step on this rank's share of the rows: the arithmetic every rank runs.

The leader (``Engine._optimizer_step``) and the followers (``follower.follow``) call
``apply_step`` with their share; ``world.py`` says how the shares add up to one process's
update. Out-of-memory backoff and the non-finite check are decided the same on every rank.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import TYPE_CHECKING

import torch

from trainer.errors import ItemFailed, WorldLost
from trainer.train.loss import forward_packed, summed_loss
from trainer.train.packing import Row

if TYPE_CHECKING:
    from trainer.train.engine import Engine

log = logging.getLogger("trainer.engine")


def apply_step(engine: Engine, mine: list[Row], targets: int, lr: float,
               step_no: int = 0, rows_each: int = 0) -> tuple[float, float | None, bool]:
    """One optimizer step from this rank's rows (every rank calls it with its share): the
    loss and gradient norm (both global), and whether the update was applied (not when
    either is not finite; the same answer on every rank, as both are global). ``step_no``:
    the global step it trains (seeds the ranks' random state, see ``seed_step``);
    ``rows_each``: the longest share, to which sharded ranks pad theirs."""
    if engine.world.distributed:
        seed_step(engine.config.train.seed, step_no, engine.world.rank)
    if engine.sharded:
        from trainer.train.sharding import padded

        try:
            loss, grad_norm = gradients(engine, padded(mine, rows_each, engine.pad_id), targets)
        except Exception as exc:
            # Sharded, the collectives run inside the forward and backward passes: a rank that
            # failed there (a lost peer, out of memory, anything) has left the others mid-way
            # through one, and only a restart of the group from the last checkpoint mends it.
            raise WorldLost(f"rank {engine.world.rank}: a sharded step failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    else:
        loss, grad_norm = gradients(engine, mine, targets)
    applied = math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))
    if applied:
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        engine.optimizer.step()
    engine.optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm, applied


def gradients(engine: Engine, mine: list[Row], targets: int) -> tuple[float, float | None]:
    """Accumulate the step's gradients over this rank's share of the rows, then sum them
    over the ranks; on out-of-memory (on any rank) every rank halves the micro-batch and
    redoes the step. ``targets`` is the step's global target count."""
    while True:
        micro = engine.state.micro_batch_size
        total, out_of_memory = 0.0, False
        try:
            for start in range(0, len(mine), micro):
                total += backward(engine, mine[start:start + micro], targets)
        except torch.OutOfMemoryError:
            if engine.sharded:  # the others wait inside a collective: only a restart ends it (sharding.py)
                raise
            out_of_memory = True
        if not engine.world.any(out_of_memory):
            break
        engine.optimizer.zero_grad(set_to_none=True)
        if engine.device.type == "cuda":
            torch.cuda.empty_cache()
        if micro == 1:
            raise ItemFailed("out of memory even at micro-batch 1: lower train.max_length or use "
                             "LoRA", transient=True) from None
        engine.state.micro_batch_size = micro // 2
        log.warning("out of memory at micro-batch %d: retrying the step with %d (and twice the "
                    "accumulation, so the batch is unchanged)", micro, micro // 2)
    total = _global_loss(engine, total)
    if not engine.sharded:  # sharded, the backward passes have already summed them
        engine.world.sum_gradients(engine.params.values())
    max_norm = engine.config.train.max_grad_norm
    return total, clip_gradients(engine, max_norm) if max_norm > 0 else None


def clip_gradients(engine: Engine, max_norm: float) -> float:
    """Scale the gradients so that their global norm is at most ``max_norm``; returns the norm.

    As ``torch.nn.utils.clip_grad_norm_``, but the norm is summed in float64: sharded ranks
    each add up their shards' squares, and in float32 that other order moved the clipping
    factor in its last bits, which Adam then amplified to ~1e-5 in the weights within a few
    steps; in float64 the factor comes out the same however the gradients are split.
    """
    grads = [p.grad for p in engine.params.values() if p.grad is not None]
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    norms = [torch.linalg.vector_norm(g, dtype=torch.float64) for g in local]
    squares = float(torch.stack(norms).square().sum()) if norms else 0.0  # one device sync
    if engine.sharded:
        squares = engine.world.sum(squares)
    norm = math.sqrt(squares)
    factor = min(1.0, max_norm / (norm + 1e-6))
    if factor < 1.0:
        for g in local:
            g.mul_(factor)
    return norm


def backward(engine: Engine, chunk: list[Row], targets: int) -> float:
    """One micro-batch's forward and backward; its share of the step's loss."""
    ids = torch.tensor([r.input_ids for r in chunk], device=engine.device)
    positions = torch.tensor([r.position_ids for r in chunk], device=engine.device)
    labels = torch.tensor([r.labels for r in chunk], device=engine.device)
    logits = forward_packed(engine.model, ids, positions)
    loss = summed_loss(logits, labels) / targets
    del logits
    loss.backward()
    return loss.item()


def _global_loss(engine: Engine, mine: float) -> float:
    """The step's loss summed over ranks; in the same collective, every rank's memory, which
    the leader keeps for the state file (``Leader.memory``)."""
    if not engine.world.distributed:
        return mine
    gpu = torch.cuda.memory_allocated(engine.device) if engine.device.type == "cuda" else 0
    rows = engine.world.gather_numbers([mine, engine._process.memory_info().rss, gpu])
    engine.leader.memory = [{"rss": int(rss), "gpu": int(gpu)} for _, rss, gpu in rows]
    return math.fsum(row[0] for row in rows)


def seed_step(seed: int, step_no: int, rank: int) -> None:
    """Several ranks: each one's random state (dropout) comes from the seed, the step and the
    rank alone, so a resumed run draws what the interrupted one would have, whatever the
    number of ranks before, with no per-rank state in the checkpoint."""
    digest = hashlib.blake2b(f"{seed}:{step_no}:{rank}".encode(), digest_size=8).digest()
    torch.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
