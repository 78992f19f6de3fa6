"""The processes one logical trainer runs on, and the collectives its step needs.

One ``World`` per process. Alone (the default) every operation is the identity and nothing
of ``torch.distributed`` is touched. Under the elastic agent (``RANK``/``WORLD_SIZE`` set and a
process group initialised) a step works like this:

- every rank is handed the same global list of packed rows (the data cursor is global: it does
  not depend on how many ranks there are) and trains on its own share, ``shard(rows)``;
- the loss is normalised by the step's *global* target count, so the summed gradients of all
  ranks equal the gradient one process would compute over all the rows;
- nothing is communicated while the micro-batches run. Only after every rank has finished
  its share do the ranks agree (``any``: did anyone run out of memory?) and then sum the
  gradients (``sum_gradients``). A rank that hits out-of-memory therefore never leaves the
  others waiting inside a collective it will not join: all of them halve the micro-batch and
  redo the step together. The price is that gradient communication does not overlap the last
  backward pass, which for the models this runs on CPU/gloo is a small share of a step
  (``bench/bench_distributed.py``).

Because every collective is called by every rank the same number of times in the same order,
a short rank (fewer rows than the others, or none) needs no padding rows.

Roles: rank 0 (the leader) reads the data and owns everything on disk; the other ranks
(followers, ``follower.py``) only train. The leader hands each rank its share of every step
(``post``: a scatter, so only node 0 needs the spool and each rank receives only its rows) and
shares its weights and optimizer state whenever they change other than by a step
(``share_tensors`` / ``share``: start, rollback, a new base).

A collective that fails means a rank is gone (killed, crashed, unreachable): every one of them
raises ``WorldLost``, which nothing in the daemon catches, and the elastic agent restarts the
group from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import torch

from trainer.errors import WorldLost


def collective(method):
    """A collective's failure is the group's end: ``WorldLost`` (see the module's docstring)."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as exc:  # gloo and NCCL errors (DistBackendError is one)
            raise WorldLost(f"rank {self.rank}: a collective failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}): another rank is gone") from exc

    return guarded


def shard_indices(count: int, rank: int, size: int) -> range:
    """The rows of a step that ``rank`` of ``size`` trains on: a contiguous block, the first
    ``count % size`` ranks one row more (so the micro-batches of a rank keep the rows' order)."""
    base, extra = divmod(count, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def place() -> dict:
    """Where this process runs, for ``trainctl status``."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls) -> World:
        """The world the elastic agent started this process in (or a world of one)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), size)

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def nodes(self) -> int:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.size)))
        return max(1, self.size // max(1, local))

    def join(self, backend: str, timeout_s: float) -> None:
        """Join the process group the elastic agent set up (its store, rank and size are in
        the environment). ``backend`` "auto": NCCL with CUDA, gloo otherwise."""
        if not self.distributed:
            return
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        timeout = timedelta(seconds=timeout_s)
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            torch.distributed.init_process_group(backend, timeout=timeout)
            return
        # The agent's store outlives a restart of the group (a static rendezvous keeps one store):
        # each attempt gets its own keys, or a new rank can read a dead one's address and fail
        # to connect (seen: "Gloo connectFullMesh failed ... Connection refused" after a restart).
        store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                           is_master=False, timeout=timeout)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        torch.distributed.init_process_group(backend, store=torch.distributed.PrefixStore(f"trainer/{attempt}", store),
                                             rank=self.rank, world_size=self.size, timeout=timeout)

    def leave(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            with contextlib.suppress(RuntimeError):  # a group already broken has nothing to say
                torch.distributed.destroy_process_group()

    @collective
    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any: one decision, taken the same everywhere."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int64)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    @collective
    def sum(self, value: float) -> float:
        """The sum over ranks of a float (in float64, so the order adds no visible error)."""
        if not self.distributed:
            return value
        total = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total.item()

    @collective
    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks, in one flat buffer per dtype and device.

        A rank that trained on no rows has no gradients: it contributes zeros. Sums, never
        averages: the loss is already normalised by the global target count (and gloo's
        averaging has known bugs).
        """
        if not self.distributed:
            return
        groups: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for members in groups.values():
            flat = torch.cat([p.grad.reshape(-1) for p in members])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            offset = 0
            for p in members:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n

    @collective
    def post(self, per_rank: list):
        """Leader: hand rank r ``per_rank[r]`` (a scatter); returns the leader's own."""
        if not self.distributed:
            return per_rank[0]
        mine = [None]
        torch.distributed.scatter_object_list(mine, per_rank, src=0)
        return mine[0]

    @collective
    def receive(self):
        """Follower: what the leader posted to this rank."""
        mine = [None]
        torch.distributed.scatter_object_list(mine, None, src=0)
        return mine[0]

    @collective
    def gather(self, value) -> list:
        """Every rank's ``value`` (a picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values = [None] * self.size
        torch.distributed.all_gather_object(values, value)
        return values

    @collective
    def gather_numbers(self, numbers: list[float]) -> list[list[float]]:
        """Every rank's ``numbers`` (the same count on each), in rank order, as float64."""
        if not self.distributed:
            return [list(numbers)]
        mine = torch.tensor(numbers, dtype=torch.float64)
        rows = [torch.empty_like(mine) for _ in range(self.size)]
        torch.distributed.all_gather(rows, mine)
        return [row.tolist() for row in rows]

    @collective
    def share(self, value=None):
        """The leader's ``value`` on every rank (a picklable object; the followers pass None)."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    @collective
    def share_tensors(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite every rank's ``tensors`` with the leader's, one flat buffer per dtype/device."""
        if not self.distributed:
            return
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for tensor in tensors:
            groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
        with torch.no_grad():
            for members in groups.values():
                flat = torch.cat([t.detach().reshape(-1) for t in members])
                torch.distributed.broadcast(flat, src=0)
                offset = 0
                for t in members:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()
