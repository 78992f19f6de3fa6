"""What the daemon knows of the engine: the values that cross the seam, and the protocol.

Torch-free, so that the daemon (and its tests, with a fake engine) depends on this module
and not on ``trainer.train.engine``, which loads torch and transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from trainer.config import CheckpointConfig
from trainer.errors import DiskUnwritable


@dataclass
class TrainState:
    """Everything that changes while training, checkpointed whole."""

    global_step: int = 0
    tokens_seen: int = 0
    loss_window: list[float] = field(default_factory=list)
    micro_batch_size: int = 0  # 0 until set; shrinks for good after an out-of-memory error
    cursor: dict | None = None  # the item in progress (data.Cursor), None between items
    last_completed: dict | None = None  # {"item_id", "sha256"} of the last item finished
    base: str | None = None  # the model dir trained on (relative to the base dir); None: model.path
    items_completed: int = 0
    world_size: int = 1  # the ranks that trained up to this checkpoint (it loads on any number)
    # The last item's held-out evaluation ({"item_id", "set", "step", "eval_loss", ...}), saved
    # with the checkpoint that finishes the item, so a crash before the daemon records it
    # loses nothing (and nothing is evaluated twice). None: not evaluated.
    last_eval: dict | None = None
    # Lineage (``train/lineage.py``): which line of training this is (a rollback starts a new
    # one, and checkpoints order by line first), the version it last published or was rolled
    # back to (the next version's parent) and that version's step, the items completed since
    # it, in order, the item in progress's start, and the rollback that began this line.
    line: int = 0
    version: str | None = None
    version_step: int = 0
    lineage: list[dict] = field(default_factory=list)
    partial: list[dict] = field(default_factory=list)  # items left mid-way (skipped, failed) since it
    item_start: dict | None = None
    rollback: dict | None = None

    @property
    def smoothed_loss(self) -> float | None:
        return sum(self.loss_window) / len(self.loss_window) if self.loss_window else None


@dataclass(frozen=True)
class ItemPlan:
    item_id: str
    sha256: str
    data_path: Path
    rows_per_epoch: int
    total_steps: int
    stats: dict
    examples: list | None = field(default=None, repr=False, compare=False)  # encoded, when small
    holdout: float = 0.0  # the share of records held out of training ([eval] holdout_fraction)


@dataclass(frozen=True)
class Progress:
    """What the engine reports after each optimizer step."""

    item_id: str
    step: int
    total: int
    global_step: int
    loss: float | None
    smoothed_loss: float | None
    lr: float
    grad_norm: float | None
    tokens: int
    tokens_per_s: float
    seconds_per_step: float
    skipped: bool  # the step was not applied (non-finite loss)
    checkpointed: bool
    eta_s: float | None = None  # from the smoothed step time
    host_rss_bytes: int = 0
    gpu_bytes: int = 0  # peak allocated on the GPU since the last step

    def record(self) -> dict:
        """One line of the item's metrics file."""
        return asdict(self)


class CheckpointRef(Protocol):
    step: int
    path: Path


class TrainingEngine(Protocol):
    """The engine as the daemon drives it: one lives as long as the daemon process.

    ``train`` calls ``after_step`` after every optimizer step and stops (checkpointed) when
    it returns False; ``space_guard`` is called with the estimated size before every save
    and may block until the disk has room; ``disk_wait`` is called when the disk refused a
    write the engine cannot go on without (a metrics line, a checkpoint): it blocks a while,
    or raises to give up, and the engine then tries the same write again. ``heartbeat`` is
    called often during long work between steps (surveying a large item in ``prepare``), so
    that the daemon goes on feeding the watchdog and the state file.
    """

    state: TrainState
    last_checkpoint: CheckpointRef | None
    load_seconds: float
    space_guard: Callable[[int], None]
    disk_wait: Callable[[DiskUnwritable], None]
    heartbeat: Callable[[], None]

    def start(self) -> CheckpointRef | None: ...

    def prepare(self, item_id: str, sha256: str, data_path: Path) -> ItemPlan: ...

    def train(self, plan: ItemPlan, after_step: Callable[[Progress], bool]) -> bool: ...

    def current_checkpoint(self) -> CheckpointRef: ...

    def checkpoint_estimate(self) -> int: ...

    def make_room(self) -> None:
        """Short of disk space: keep only the newest checkpoints the engine needs."""

    def set_checkpoint_config(self, checkpoint: CheckpointConfig) -> None: ...

    def snapshot(self, directory: Path, day: str, *, keep_days: int) -> Path | None:
        """The day's snapshot directory (None: nothing trained since the last one)."""

    def consolidate(self, directory: Path, *, keep_versions: int) -> Path:
        """The new version's directory."""

    def continue_from(self, version: str, meta: dict, request: dict, requeue: list[dict]) -> CheckpointRef:
        """Rollback: a new line from published version ``version`` (``meta``: its metadata),
        committed as one checkpoint that also records ``request`` and the items to queue again."""

    def memory(self) -> dict:
        """{"rss": resident bytes of this process, "gpu": {...} or None}."""

    def keep_alive(self) -> None:
        """Idle or paused: keep the other ranks' wait within the group's timeout (one process: nothing)."""

    def world_view(self) -> dict | None:
        """The ranks training together (size, nodes, each rank's host, pid, memory), or None alone."""
