"""The metrics sinks on their own: the Prometheus file's format and when it is rewritten, the
fan-out the config builds. (A real daemon writing them: test_observability.py.)"""

from __future__ import annotations

import math

from helpers.exposition import parse

from trainer.config import parse_config
from trainer.daemon.prometheus import Figures, PrometheusTextfile, exposition, textfile_path
from trainer.daemon.sinks import Sinks, sinks_for
from trainer.states import DaemonState
from trainer.train.protocol import Progress


def progress(step: int, total: int = 10, loss: float | None = 2.5, item_id: str = "item") -> Progress:
    return Progress(item_id, step, total, 100 + step, loss, loss, 1e-4, None, 512, 1000.0, 0.5, False, False)


def test_label_values_are_escaped_and_every_line_is_valid():
    figures = Figures(state="training", progress=progress(3, item_id='we"ird\\id\nx', loss=math.nan),
                      queue={"pending": 2})
    text = exposition(figures, '/srv/"trainer"')
    parse(text)
    assert 'item="we\\"ird\\\\id\\nx"' in text and 'base_dir="/srv/\\"trainer\\""' in text
    assert "trainer_loss{" in text and text.split("trainer_loss{", 1)[1].split("\n")[0].endswith(" NaN")
    assert "trainer_grad_norm" not in text  # None: no sample rather than a made-up one


def test_steps_rewrite_at_most_once_per_interval_but_states_and_item_ends_at_once(layout, tmp_path):
    path = tmp_path / "trainer.prom"
    sink = PrometheusTextfile(layout, path, interval_s=3600)
    sink.state(DaemonState.TRAINING, None)
    assert 'state="training"} 1' in path.read_text()
    sink.step(progress(1))  # within the interval: not rewritten
    assert "trainer_steps_total" in path.read_text() and "trainer_item_step{" not in path.read_text()
    sink.step(progress(10))  # the item's last step: written, whatever the interval
    assert 'trainer_item_step{base_dir="%s",item="item"} 10' % layout.root in path.read_text()
    assert f'trainer_steps_total{{base_dir="{layout.root}"}} 2' in path.read_text()
    sink.state(DaemonState.IDLE, None)  # a change of state: at once
    assert 'state="idle"} 1' in path.read_text()


def test_the_config_builds_the_sinks_it_asks_for(layout, tmp_path):
    assert sinks_for(layout, parse_config({})) is None
    built = sinks_for(layout, parse_config({"metrics": {"prometheus_textfile": str(tmp_path / "{name}.prom")}}))
    assert isinstance(built, Sinks) and [type(s).__name__ for s in built.sinks] == ["PrometheusTextfile"]
    assert built.sinks[0].path == tmp_path / f"{layout.root.name}.prom"
    assert textfile_path("/x/{name}.prom", layout).name == f"{layout.root.name}.prom"
