"""What rank 0 does for the other ranks, apart from training: the commands it posts them.

Every command is one scatter (``World.post``) that the followers receive in ``follower.follow``:
``step`` (each rank's share of the step's rows), ``load`` (after the weights changed other
than by a step: start, rollback, a new base; followed by the weights and optimizer state),
``alive`` (idle or paused: the followers wait inside a collective, which must not reach the
group's timeout) and ``stop``. Sharded (``sharding.py``), three more: ``save`` (every rank
writes its shard of a checkpoint), ``gather`` (the whole weights, for a publication) and
``forward`` (the leader runs a forward pass of its own: an evaluation, a sample answer).
It also keeps what the state file shows of the ranks. A world of one posts nothing.
"""

from __future__ import annotations

import contextlib
import time

import torch

from trainer.train.packing import Row
from trainer.train.world import World, place, shard_indices

KEEP_ALIVE_S = 30.0  # idle, the followers hear from the leader this often (or at a quarter of the timeout)


class Leader:
    def __init__(self, world: World) -> None:
        self.world = world
        self.places = [place()]  # where each rank runs (host, pid), gathered when they load
        self.memory: list[dict] | None = None  # each rank's memory at the last step
        self._last_post = time.monotonic()  # when the followers last heard from the leader
        self._stepping = False  # inside a step every rank runs the forwards: none to announce

    def tell(self, *command) -> None:
        """The same command to every follower."""
        if self.world.distributed:
            self.world.post([command] * self.world.size)
            self._last_post = time.monotonic()

    def hand_out(self, rows: list[Row], targets: int, lr: float, step_no: int) -> list[Row]:
        """Post every follower its share of the step; returns the leader's own. With it goes the
        longest share's length: sharded ranks pad theirs to it (``sharding.padded``)."""
        if not self.world.distributed:
            return rows
        size = self.world.size
        shares = [[rows[i] for i in shard_indices(len(rows), rank, size)] for rank in range(size)]
        rows_each = max(len(share) for share in shares)
        self._last_post = time.monotonic()
        return self.world.post([("step", share, targets, lr, step_no, rows_each) for share in shares])[1]

    @contextlib.contextmanager
    def stepping(self):
        self._stepping = True
        try:
            yield
        finally:
            self._stepping = False

    def announce_forward(self) -> None:
        """Before each of the leader's own forward passes of a sharded model (``sharding.mirror``)."""
        if not self._stepping:
            self.tell("forward")

    def share(self, base: str | None, micro_batch_size: int, params: list[torch.Tensor], optimizer_state: dict) -> None:
        """The followers load ``base`` and take the leader's weights and optimizer state."""
        if not self.world.distributed:
            return
        self.tell("load", base, micro_batch_size)
        self.world.share_tensors(params)
        self.world.share(optimizer_state)
        self.places = self.world.gather(place())
        self._last_post = time.monotonic()

    def keep_alive(self, timeout_s: float) -> None:
        """Idle or paused: remind the followers, well within the group's timeout ``timeout_s``."""
        if time.monotonic() - self._last_post > min(KEEP_ALIVE_S, timeout_s / 4):
            self.tell("alive")

    def release(self) -> None:
        """The followers return from ``follower.follow``."""
        self.tell("stop")

    def view(self) -> dict | None:
        """The ranks, for the state file: where each runs and its memory at the last step."""
        if not self.world.distributed:
            return None
        memory = self.memory or [{}] * self.world.size
        return {"size": self.world.size, "nodes": self.world.nodes,
                "ranks": [{"rank": rank, **where, **memory[rank]} for rank, where in enumerate(self.places)]}
