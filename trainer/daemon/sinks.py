"""The metrics sinks the config asks for, as the one ``MetricsSink`` the daemon is given."""

from __future__ import annotations

import logging

from trainer.config import Config
from trainer.daemon.reporter import MetricsSink
from trainer.spool.layout import Layout
from trainer.states import DaemonState
from trainer.train.protocol import Progress

log = logging.getLogger("trainer.metrics")


class Sinks:
    """Tells every sink in turn (each handles its own failures: all are display only)."""

    def __init__(self, sinks: list[MetricsSink]) -> None:
        self.sinks = sinks

    def step(self, progress: Progress) -> None:
        for sink in self.sinks:
            sink.step(progress)

    def state(self, state: DaemonState, reason: str | None) -> None:
        for sink in self.sinks:
            sink.state(state, reason)


def sinks_for(layout: Layout, config: Config) -> MetricsSink | None:
    """None when the config asks for none (the reporter then uses its no-op)."""
    sinks: list[MetricsSink] = []
    if config.metrics.prometheus_textfile:
        from trainer.daemon.prometheus import PrometheusTextfile, textfile_path

        path = textfile_path(config.metrics.prometheus_textfile, layout)
        sinks.append(PrometheusTextfile(layout, path))
        log.info("Prometheus text file: %s", path)
    if config.metrics.tensorboard:
        from trainer.daemon.tensorboard_events import MissingPackage, TensorBoardEvents

        try:
            sinks.append(TensorBoardEvents(layout))
            log.info("TensorBoard events under %s", layout.root / "tensorboard")
        except MissingPackage as exc:  # training matters more than a chart: said, and on without it
            log.warning("%s", exc)
    return Sinks(sinks) if sinks else None
