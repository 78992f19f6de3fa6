"""A torch-free engine for in-process daemon tests: the engine protocol, no model.

Each item trains ``steps_per_item`` steps; a checkpoint is "saved" every ``checkpoint_every``
steps (only the step is remembered, and the space guard is called first, as the real engine
does). ``memory`` reports whatever ``rss`` yields, so a test can make memory creep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trainer.config import CheckpointConfig, Config
from trainer.errors import DiskUnwritable
from trainer.train.protocol import ItemPlan, Progress, TrainState


@dataclass
class FakeCheckpoint:
    step: int
    path: Path


class FakeEngine:
    def __init__(self, root: Path, config: Config, *, steps_per_item: int = 5, checkpoint_every: int = 2,
                 rss: Iterator[int] | None = None, step_seconds: float = 0.0) -> None:
        self.root = root
        self.config = config
        self.steps_per_item = steps_per_item
        self.checkpoint_every = checkpoint_every
        self.rss = rss
        self.step_seconds = step_seconds
        self.state = TrainState()
        self.last_checkpoint: FakeCheckpoint | None = None
        self.load_seconds = 0.0
        self.space_guard: Callable[[int], None] = lambda estimate: None
        self.heartbeat: Callable[[], None] = lambda: None
        self.disk_wait: Callable[[DiskUnwritable], None] = _raise
        self.snapshots: list[str] = []
        self.versions: list[str] = []

    def start(self) -> FakeCheckpoint | None:
        return self.last_checkpoint

    def prepare(self, item_id: str, sha256: str, data_path: Path) -> ItemPlan:
        resuming = bool(self.state.cursor and self.state.cursor["item_id"] == item_id)
        return ItemPlan(item_id, sha256, data_path, rows_per_epoch=self.steps_per_item,
                        total_steps=self.steps_per_item, stats={} if resuming else {"tokens": 10})

    def train(self, plan: ItemPlan, after_step: Callable[[Progress], bool]) -> bool:
        step = self.state.cursor["item_step"] if self.state.cursor else 0
        while step < plan.total_steps:
            time.sleep(self.step_seconds)
            step += 1
            self.state.global_step += 1
            self.state.cursor = {"item_id": plan.item_id, "item_step": step}
            checkpointed = step % self.checkpoint_every == 0 or step == plan.total_steps
            if checkpointed:
                self.checkpoint()
            progress = Progress(plan.item_id, step, plan.total_steps, self.state.global_step, 1.0, 1.0, 1e-3, 1.0,
                                10, 100.0, 0.01, skipped=False, checkpointed=checkpointed)
            if not after_step(progress) and step < plan.total_steps:
                return False
        self.state.cursor = None
        self.state.items_completed += 1
        return True

    def checkpoint(self) -> FakeCheckpoint:
        self.space_guard(self.checkpoint_estimate())
        self.last_checkpoint = FakeCheckpoint(self.state.global_step, self.root / "checkpoints" / "fake")
        return self.last_checkpoint

    def current_checkpoint(self) -> FakeCheckpoint:
        return self.checkpoint()

    def checkpoint_estimate(self) -> int:
        return 1024

    def make_room(self) -> None:
        pass

    def set_checkpoint_config(self, checkpoint: CheckpointConfig) -> None:
        self.config = self.config.__class__(**{**self.config.__dict__, "checkpoint": checkpoint})

    def snapshot(self, directory: Path, day: str, *, keep_days: int) -> Path:
        self.snapshots.append(day)
        return directory / day

    def consolidate(self, directory: Path, *, keep_versions: int) -> Path:
        self.versions.append(f"v{len(self.versions) + 1:03d}")
        return directory / self.versions[-1]

    def memory(self) -> dict:
        return {"rss": next(self.rss) if self.rss is not None else 1 << 30, "gpu": None}

    def keep_alive(self) -> None:
        pass

    def world_view(self) -> dict | None:
        return None


def _raise(refused: DiskUnwritable) -> None:
    raise refused
