"""A base dir written by format version 1, checked in: it must always load and work.

If this test breaks, the on-disk format changed: bump FORMAT_VERSION and write a migration,
never silently reinterpret what users already have on disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from helpers.common import trainctl
from helpers.fake_engine import FakeEngine

from trainer import clock
from trainer.config import Config, load_config
from trainer.daemon.service import Daemon
from trainer.spool import control, queue
from trainer.spool.layout import format_version, open_base
from trainer.spool.status import collect
from trainer.states import ItemState, Priority

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "base-v1"
ACTIVE = "20261128T200014.292981Z-1e26cc0e"
FAILED = "20261128T200014.287069Z-2b531fb3"
HELD = "20261128T200014.290990Z-0932be69"


@pytest.fixture
def old_base(tmp_path: Path):
    copy = tmp_path / "base"
    shutil.copytree(FIXTURE, copy)
    return open_base(copy)


def test_every_item_of_the_v1_fixture_loads_in_its_state(old_base):
    items = {item.id: item for item in queue.list_items(old_base, list(ItemState))}
    assert {item.state for item in items.values()} == set(ItemState)
    assert all(item.meta is not None for item in items.values()), [i.meta_problem for i in items.values()]
    # Format 1 wrote a "cursor" into meta.json (never read: the engine keeps its place in its
    # checkpoints); it is still there on disk and ignored.
    assert b'"cursor"' in (items[ACTIVE].path / "meta.json").read_bytes()
    assert b'"cursor"' not in items[ACTIVE].meta.to_json()
    assert items[FAILED].meta.attempts == 1
    assert [e.message for e in items[FAILED].meta.errors] == ["CUDA out of memory", "loss is not finite for 8 steps"]
    assert queue.counts(old_base)["pending.low"] == 1


def test_the_v1_fixture_control_state_and_events_read_back(old_base):
    assert control.read_requests(old_base).pause["reason"] == "fixture"
    report = collect(old_base, Config(), clock.read())
    assert report["daemon"]["liveness"] == "not-running" and report["daemon"]["last_state"] == "training"
    assert report["paused"] is True


def test_the_v1_fixture_still_works_through_trainctl(old_base):
    assert trainctl(old_base.root, "list", "--all").returncode == 0
    history = orjson.loads(trainctl(old_base.root, "history", "--json").stdout)
    assert history["unreadable_lines"] == 0 and len(history["events"]) >= 10
    assert trainctl(old_base.root, "retry", FAILED).returncode == 0
    assert trainctl(old_base.root, "release", HELD).returncode == 0
    queue.requeue(old_base, ACTIVE, reason="recovered", count_attempt=True)
    assert queue.find(old_base, ACTIVE).priority is Priority.HIGH


def test_the_daemon_upgrades_the_v1_event_log_at_start_and_it_reads_the_same(old_base):
    queries = [("history", "--json"), ("show", FAILED, "--json"), ("history", "--id", HELD, "--json"),
               ("history", "-n", "3", "--json"), ("history", "--since", "2026-11-28T20:00:14.29", "--json")]
    before = [trainctl(old_base.root, *args).stdout for args in queries]
    daemon = Daemon(old_base, load_config(old_base.config_file), engine_factory=FakeEngine)
    daemon.start()  # upgrades, then recovers: the active item is requeued (one more event)
    assert format_version(old_base) == 2 and not old_base.old_events.exists()
    assert [p.name for p in old_base.converted_events.glob("*.jsonl")] == ["2026-11.jsonl"]
    after = [trainctl(old_base.root, *args).stdout for args in queries]
    assert after[1:3] == before[1:3], "show and history --id: the same"
    old, new = (orjson.loads(text)["events"] for text in (before[0], after[0]))
    assert new[:len(old)] == old and [e["event"] for e in new[len(old):]] == ["requeued"]
