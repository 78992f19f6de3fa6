"""TensorBoard event files per item (``[metrics] tensorboard = true``): ``tensorboard/ID/``.

``tensorboard --logdir BASE/tensorboard`` then shows one run per item, x = the model's global
step, so consecutive items' curves continue each other. The tensorboard package is optional
(``pip install 'trainer[tensorboard]'``) and imported only here, when this sink is made.
Display only: a write that fails is said once in the log and never reaches the training.
"""

from __future__ import annotations

import logging
import time

from trainer.spool.layout import Layout
from trainer.states import DaemonState
from trainer.train.protocol import Progress

log = logging.getLogger("trainer.metrics")

SCALARS = {  # tag -> Progress field
    "train/loss": "loss",
    "train/loss_smoothed": "smoothed_loss",
    "train/learning_rate": "lr",
    "train/grad_norm": "grad_norm",
    "train/tokens_per_second": "tokens_per_s",
    "train/step_seconds": "seconds_per_step",
}


class MissingPackage(Exception):
    """The tensorboard package is not installed."""


class TensorBoardEvents:
    """A MetricsSink writing one event file per item (a new one whenever the item changes)."""

    def __init__(self, layout: Layout) -> None:
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError as exc:
            raise MissingPackage("[metrics] tensorboard = true needs the tensorboard package: "
                                 "pip install 'trainer[tensorboard]' (or set it to false)") from exc
        self._event, self._summary, self._writer_cls = event_pb2.Event, summary_pb2.Summary, EventFileWriter
        self.root = layout.root / "tensorboard"
        self._writer = None
        self._item: str | None = None
        self._failing = False

    def step(self, progress: Progress) -> None:
        try:
            if progress.item_id != self._item:
                self.close()
                self.root.mkdir(exist_ok=True)
                self._writer = self._writer_cls(str(self.root / progress.item_id), flush_secs=5)
                self._item = progress.item_id
            values = [self._summary.Value(tag=tag, simple_value=float(value)) for tag, field in SCALARS.items()
                      if (value := getattr(progress, field)) is not None]
            self._writer.add_event(self._event(wall_time=time.time(), step=progress.global_step,
                                               summary=self._summary(value=values)))
        except Exception as exc:  # its writer thread re-raises what it met, of any type: never the item's fault
            self._failed(exc)
            return
        self._failing = False

    def state(self, state: DaemonState, reason: str | None) -> None:
        if state is not DaemonState.TRAINING and self._writer is not None:
            try:
                self._writer.flush()  # what a person looks at between items is complete
            except Exception as exc:
                self._failed(exc)

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer, self._item = self._writer, None, None
            try:
                writer.close()
            except Exception as exc:
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("cannot write TensorBoard events under %s (%s): those steps are missing from them",
                        self.root, getattr(exc, "strerror", None) or exc)
