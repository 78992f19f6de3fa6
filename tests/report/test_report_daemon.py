"""The copy of the page the daemon keeps ([report] every_minutes), on the real service loop
with a fake engine and a clock the test moves."""

from __future__ import annotations

import logging
import os
import stat
from datetime import datetime

from helpers.browser import Dom
from helpers.daemon_proc import enqueue_sample, small_config
from helpers.fake_engine import FakeEngine

from trainer.clock import Now
from trainer.config import default_config_toml, load_config
from trainer.daemon.report_page import page_due
from trainer.daemon.service import Daemon
from trainer.spool import queue
from trainer.spool.layout import init_base
from trainer.states import ItemState

DAY = datetime(2031, 5, 14, 13, 0)


class MovedClock:
    """Monotonic seconds set by the test; read at every tick and after every step."""

    def __init__(self) -> None:
        self.monotonic = 0.0

    def now(self) -> Now:
        return Now(utc=DAY, local=DAY, monotonic=self.monotonic)


def base_with(tmp_path, every_minutes: float):
    layout, _ = init_base(tmp_path / "base", default_config_toml())
    layout.config_file.write_text(small_config(report={"every_minutes": every_minutes}))
    return layout


def started(layout, clock) -> Daemon:
    daemon = Daemon(layout, load_config(layout.config_file), clock=clock,
                    engine_factory=lambda root, config: FakeEngine(root, config))
    daemon.start()
    return daemon


def done_rows(page) -> str:
    return Dom(page.read_text()).table_text("done")


def _current(page) -> str:
    html = page.read_text()
    return html[html.index('id="current"'):html.index('id="loss"')]


def test_page_due_is_a_pure_decision_on_the_monotonic_clock():
    assert page_due(None, 5.0, 1.0) and not page_due(None, 5.0, 0.0)
    assert not page_due(100.0, 159.0, 1.0) and page_due(100.0, 160.0, 1.0)


def test_the_daemon_rewrites_the_page_at_most_every_every_minutes_group_readable(tmp_path):
    layout = base_with(tmp_path, every_minutes=1)
    clock = MovedClock()
    daemon = started(layout, clock)
    page = layout.root / "report.html"
    first = enqueue_sample(layout, tmp_path, records=5, seed=1, name="first")
    daemon.tick(clock.now())  # writes the page at monotonic 0, then trains the first item
    assert queue.find(layout, first).state is ItemState.DONE
    assert stat.S_IMODE(os.stat(page).st_mode) == 0o640
    assert first not in done_rows(page), "written before training"

    second = enqueue_sample(layout, tmp_path, records=5, seed=2, name="second")
    clock.monotonic = 30.0
    daemon.tick(clock.now())  # half a minute later: not due, neither at the tick nor between the steps
    assert first not in done_rows(page)

    clock.monotonic = 61.0
    daemon.tick(clock.now())  # due: rewritten, showing both items done (the second trained at 30 s)
    assert first in done_rows(page) and second in done_rows(page)


def test_the_page_is_rewritten_between_steps_of_a_long_item(tmp_path):
    layout = base_with(tmp_path, every_minutes=1)
    clock = MovedClock()
    daemon = started(layout, clock)
    daemon.tick(clock.now())  # idle: the page at monotonic 0, nothing in it
    item = enqueue_sample(layout, tmp_path, records=5, seed=1, name="long")
    page = layout.root / "report.html"
    seen = []

    def step(progress):
        clock.monotonic += 40.0  # every step takes 40 s: the page is due every other step
        seen.append(progress.step > 1 and "Current item" in page.read_text() and item in _current(page))
        return original(progress)

    original, daemon.after_step = daemon.after_step, step
    daemon.tick(clock.now())
    assert queue.find(layout, item).state is ItemState.DONE
    assert any(seen), "rewritten while the item was training"


def test_no_page_by_default(tmp_path):
    layout = base_with(tmp_path, every_minutes=0)
    daemon = started(layout, MovedClock())
    enqueue_sample(layout, tmp_path, records=5)
    daemon.tick(daemon.clock.now())
    assert not (layout.root / "report.html").exists()


def test_a_page_that_cannot_be_written_fails_no_item_and_is_logged_once(tmp_path, caplog):
    layout = base_with(tmp_path, every_minutes=1)
    (layout.root / "report.html").mkdir()  # the rename over it fails, like a full disk would
    clock = MovedClock()
    daemon = started(layout, clock)
    ids = [enqueue_sample(layout, tmp_path, records=5, seed=n, name=f"i{n}") for n in range(2)]
    with caplog.at_level(logging.WARNING, logger="trainer.daemon"):
        for moment in (0.0, 61.0, 122.0):
            clock.monotonic = moment
            daemon.tick(clock.now())
    assert [queue.find(layout, i).state for i in ids] == [ItemState.DONE, ItemState.DONE]
    warnings = [r for r in caplog.records if "report page: not written" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
