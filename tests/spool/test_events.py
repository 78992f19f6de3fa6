"""The event log in monthly segments: the segment an event goes to, readers that open only
what they need and say what the single-file reader said, retention, and the upgrade of a
format-1 ``events.jsonl``, killed at each of its steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from helpers.common import REPO, trainctl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.config import default_config_toml
from trainer.eventkinds import Event
from trainer.spool import events, upgrade
from trainer.spool.layout import Layout, format_version, init_base
from trainer.timefmt import iso, parse_iso

UTC = timezone.utc
START = datetime(2026, 10, 30, 22, 0, tzinfo=UTC)  # the log runs across a month's and a year's end


# --- the reader this replaces: one file, read whole (or backwards for -n) ---------------------

def single_file_read(path: Path, since: datetime | None = None, item_id: str | None = None,
                     last: int | None = None) -> events.EventLog:
    """Format 1's reader, kept as the oracle: every reader must say what it said."""
    log = events.EventLog()
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    for line in (lines if last is None else reversed(lines)):
        if not line.strip():
            continue
        record = events.parse_line(line)
        if record is None:
            log.unreadable_lines += 1
            continue
        if since is not None and not events._at_or_after(record["t"], since, iso(since)):
            continue
        if item_id is not None and record.get("id") != item_id:
            continue
        log.events.append(record)
        if last is not None and len(log.events) >= last:
            break
    if last is not None:
        log.events.reverse()
    return log


def item_id_at(moment: datetime, n: int) -> str:
    return moment.strftime("%Y%m%dT%H%M%S.%fZ") + f"-{n:08x}"


def event_line(moment: datetime, event: str, item_id: str | None, offset_hours: int = 0) -> bytes:
    stamp = iso(moment) if offset_hours == 0 else moment.astimezone(timezone(timedelta(hours=offset_hours))).isoformat()
    return orjson.dumps({"t": stamp, "event": event, "id": item_id, "n": 1})


MONTH_STARTS = [datetime(2026, m, 1, tzinfo=UTC) for m in (11, 12)] + [datetime(2027, m, 1, tzinfo=UTC)
                                                                       for m in (1, 2, 3)]
# Times anywhere over ~5 months, or within two hours of a month's start (where segments meet).
times = st.one_of(
    st.integers(0, 150 * 86_400).map(lambda s: START + timedelta(seconds=s)),
    st.builds(lambda start, s: start + timedelta(seconds=s), st.sampled_from(MONTH_STARTS), st.integers(-7200, 7200)),
)


@st.composite
def logs(draw) -> tuple[bytes, list[str], list[datetime]]:
    """A format-1 log in time order over ~5 months: items enqueued, then claimed and done,
    stamps ours or with another UTC offset, with garbage, blank and a torn last line."""
    count = draw(st.integers(1, 12))
    enqueued = sorted(draw(times) + timedelta(microseconds=n) for n in range(count))
    ids = [item_id_at(moment, n) for n, moment in enumerate(enqueued)]
    timed = []
    for item_id, moment in zip(ids, enqueued):
        timed.append((moment, b"enqueued", item_id))
        for event in draw(st.lists(st.sampled_from(["claimed", "done", "held"]), max_size=3)):
            moment = max(moment, draw(st.one_of(times, st.just(moment + timedelta(seconds=1)))))
            timed.append((moment, event.encode(), item_id))
    lines = [event_line(moment, event.decode(), item_id, draw(st.sampled_from([0, 0, 0, 2, -5])))
             for moment, event, item_id in sorted(timed)]
    for _ in range(draw(st.integers(0, 4))):
        junk = draw(st.sampled_from([b"", b"   ", b"{not json", b'{"t": 5, "event": "x"}', b"\xff\xfe", b"[1]"]))
        lines.insert(draw(st.integers(0, len(lines))), junk)
    data = b"\n".join(lines) + b"\n"
    if draw(st.booleans()):
        data += b'{"t": "2027-01-01T00:00:00.000000+00:00", "ev'  # torn by a crash
    return data, ids, [moment for moment, _, _ in sorted(timed)]


@st.composite
def queries(draw, ids: list[str], logged: list[datetime]) -> dict:
    since = draw(st.one_of(st.none(), st.sampled_from(logged), times,
                           st.builds(lambda d: START + timedelta(days=d), st.integers(-10, 200))))
    return {"since": since, "item_id": draw(st.one_of(st.none(), st.sampled_from(ids))),
            "last": draw(st.one_of(st.none(), st.integers(1, 30)))}


def v1_base(root: Path, data: bytes) -> Layout:
    """A base dir as format 1 left it: FORMAT 1, events.jsonl, no events/."""
    layout, _ = init_base(root, default_config_toml())
    layout.events_dir.rmdir()
    layout.format_file.write_bytes(b'{"format":"trainer-base","version":1}\n')
    layout.old_events.write_bytes(data)
    return layout


class Stop(Exception):
    pass


def stop_at(point: str):
    def step(name: str) -> None:
        if name == point:
            raise Stop(point)
    return step


def every_state_of_the_upgrade(root: Path, data: bytes):
    """The same log as format 1 left it, stopped after each step of the upgrade, upgraded,
    and split into live segments (as appends make them)."""
    for point in ("format", "split", "staged", "published", None):
        layout = v1_base(root / f"at-{point}", data)
        try:
            upgrade.upgrade(layout, step=stop_at(point) if point else lambda name: None)
        except Stop:
            pass
        yield f"upgrade stopped after {point}" if point else "upgraded", layout
    layout, _ = init_base(root / "live", default_config_toml())
    with open(root / "at-format" / "events.jsonl", "rb") as old:
        upgrade.split_by_month(old, layout.events_dir, fallback="2026-11")
    yield "live segments", layout


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


@SETTINGS
@given(data=st.data(), log=logs())
def test_every_reader_says_what_the_single_file_reader_said(data, log):
    content, ids, times = log
    with tempfile.TemporaryDirectory() as work:
        single = Path(work) / "single.jsonl"
        single.write_bytes(content)
        query = data.draw(queries(ids, times))
        expected = single_file_read(single, **query)
        pruned = events.first_month(query["since"], query["item_id"]) is not None
        for state, layout in every_state_of_the_upgrade(Path(work), content):
            found = events.read(layout, **query)
            assert found.events == expected.events, (state, query)
            if not pruned:  # with since or an id, only the segments read are counted
                assert found.unreadable_lines == expected.unreadable_lines, (state, query)


# --- the segment an event goes to ------------------------------------------------------------

@pytest.mark.parametrize("stamp, month", [
    ("2026-11-30T23:59:59.999999+00:00", "2026-11"),
    ("2026-12-01T00:00:00.000000+00:00", "2026-12"),
    ("2026-12-01T01:30:00+02:00", "2026-11"),  # 23:30 UTC on the 30th
    ("2026-12-31T20:00:00-05:00", "2027-01"),
    ("2026-11-05T10:00:00", "2026-11"),  # naive: taken as UTC, as everywhere
    ("not a time", None),
    ("2026-13-01T00:00:00.000000+00:00", None),
])
def test_an_event_belongs_to_the_utc_month_of_its_time(stamp, month):
    assert events.stamp_month(stamp) == month
    if month is not None:
        assert events.month_of(parse_iso(stamp)) == month


def test_an_appended_event_goes_to_its_months_segment_with_the_groups_mode(layout):
    old = os.umask(0o077)
    try:
        events.append(layout, Event.HELD, "x", reason="test")
    finally:
        os.umask(old)
    [segment] = layout.events_dir.iterdir()
    record = orjson.loads(segment.read_bytes())
    assert segment.name == f"{events.stamp_month(record['t'])}.jsonl" and record["event"] == "held"
    assert os.stat(segment).st_mode & 0o777 == 0o660


def test_events_are_appended_to_a_format_1_base_dir_before_its_upgrade(tmp_path):
    layout = v1_base(tmp_path / "b", event_line(START, "enqueued", "a") + b"\n")
    events.append(layout, Event.HELD, "a")
    assert layout.old_events.read_bytes().count(b"\n") == 1, "events.jsonl is never appended to"
    assert [e["event"] for e in events.read(layout).events] == ["enqueued", "held"]


def test_an_item_id_names_the_first_month_its_events_can_be_in():
    assert events.first_month(None, "20261130T235959.999999Z-0000abcd") == "2026-11"
    assert events.first_month(datetime(2027, 1, 2, tzinfo=UTC), "20261130T235959.999999Z-0000abcd") == "2027-01"
    assert events.first_month(None, "item-1") is None  # not an id: every month
    assert events.first_month(None, None) is None


def test_a_read_since_a_month_opens_no_older_segment(layout):
    (layout.events_dir / "2026-10.jsonl").write_bytes(b"garbage\n" + event_line(START, "done", "a") + b"\n")
    (layout.events_dir / "2026-12.jsonl").write_bytes(event_line(datetime(2026, 12, 3, tzinfo=UTC), "done", "b") + b"\n")
    recent = events.read(layout, since=datetime(2026, 12, 1, tzinfo=UTC))
    assert [e["id"] for e in recent.events] == ["b"] and recent.unreadable_lines == 0
    assert events.read(layout).unreadable_lines == 1, "the whole log counts the older garbage"
    assert [e["id"] for e in events.read(layout, item_id=item_id_at(datetime(2026, 12, 2), 1)).events] == []
    assert [e["id"] for e in events.read(layout, last=1).events] == ["b"]


# --- retention -------------------------------------------------------------------------------

def test_retention_keeps_the_current_month_and_the_whole_months_asked_for():
    months = ["2026-09", "2026-10", "2026-11", "2026-12", "2027-01", "2027-02"]
    assert events.expired_months(months, "2027-02", 0) == []
    assert events.expired_months(months, "2027-02", 2) == ["2026-09", "2026-10", "2026-11"]
    assert events.expired_months(months, "2027-01", 1) == ["2026-09", "2026-10", "2026-11"]
    assert events.expired_months(months, "2027-02", 12) == []


def test_retention_never_empties_the_log_when_the_clock_runs_years_ahead():
    months = ["2026-09", "2026-10", "2026-11"]
    assert events.expired_months(months, "2030-01", 1) == ["2026-09"], "the newest keep_months + 1 stay"
    assert events.expired_months(months + ["2030-01"], "2030-01", 1) == ["2026-09", "2026-10"]


def test_removing_a_month_removes_its_live_and_converted_segments(tmp_path):
    layout = v1_base(tmp_path / "b", event_line(START, "enqueued", "a") + b"\n"
                     + event_line(datetime(2026, 11, 2, tzinfo=UTC), "done", "a") + b"\n")
    upgrade.upgrade(layout)
    (layout.events_dir / "2026-10.jsonl").write_bytes(event_line(START, "held", "a") + b"\n")
    assert events.months(layout) == ["2026-10", "2026-11"]
    events.remove_month(layout, "2026-10")
    assert events.months(layout) == ["2026-11"]
    assert [e["event"] for e in events.read(layout).events] == ["done"]
    with pytest.raises(ValueError):
        events.remove_month(layout, "../x")


# --- the upgrade from format 1 ---------------------------------------------------------------

def year_of_events(count: int = 400) -> bytes:
    """``count`` items over a year, three events each, and a torn last line."""
    lines = []
    for n in range(count):
        moment = START + timedelta(hours=n * 22)
        item = item_id_at(moment, n)
        lines += [event_line(moment, "enqueued", item), event_line(moment + timedelta(minutes=1), "claimed", item),
                  event_line(moment + timedelta(minutes=9), "done", item)]
    return b"\n".join(lines) + b'\n{"t": "2027-10-01T00:0'


KILLER = """
import os, signal, sys
from trainer.spool import upgrade
from trainer.spool.layout import open_base

def step(name):
    if name == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)

upgrade.upgrade(open_base(sys.argv[1]), step=step)
"""


@pytest.mark.parametrize("point", ["format", "split", "staged", "published", "removed"])
def test_an_upgrade_killed_at_each_step_ends_with_every_event_exactly_once(tmp_path, point):
    data = year_of_events()
    layout = v1_base(tmp_path / "b", data)
    expected = single_file_read(layout.old_events)
    killed = subprocess.run([sys.executable, "-c", KILLER, str(layout.root), point], cwd=REPO, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    during = events.read(layout)
    assert during.events == expected.events and during.unreadable_lines == expected.unreadable_lines
    events.append(layout, Event.HELD, "after-the-kill")  # trainctl, before the daemon starts again
    upgrade.upgrade(layout)
    after = events.read(layout)
    assert after.events[:-1] == expected.events and after.events[-1]["id"] == "after-the-kill"
    assert after.unreadable_lines == expected.unreadable_lines
    assert format_version(layout) == 2 and not layout.old_events.exists()
    assert not (layout.tmp / upgrade.STAGING_NAME).exists()
    parts = sorted(layout.converted_events.glob("*.jsonl"))
    assert [p.name for p in parts][:2] == ["2026-10.jsonl", "2026-11.jsonl"] and len(parts) == 13
    assert b"".join(p.read_bytes() for p in parts) == data, "every byte, once, in order"
    assert upgrade.upgrade(layout) == upgrade.UpgradeReport(), "and a finished upgrade does nothing"


def test_history_and_show_read_the_same_before_and_after_the_upgrade(tmp_path):
    layout = v1_base(tmp_path / "b", year_of_events())
    item = item_id_at(START + timedelta(hours=200 * 22), 200)
    commands = [("history", "--json"), ("history", "-n", "5", "--json"), ("history", "--id", item, "--json"),
                ("history", "--since", iso(START + timedelta(days=300)), "--json")]
    before = [trainctl(layout.root, *args) for args in commands]
    upgrade.upgrade(layout)
    after = [trainctl(layout.root, *args) for args in commands]
    for args, old, new in zip(commands, before, after):
        assert old.returncode == 0 and (old.stdout, old.stderr) == (new.stdout, new.stderr), args
    assert len(orjson.loads(after[2].stdout)["events"]) == 3


def test_lines_an_older_trainer_appends_after_the_split_stay_and_are_read_once(tmp_path):
    layout = v1_base(tmp_path / "b", year_of_events(30))
    late = event_line(datetime(2027, 2, 1, tzinfo=UTC), "enqueued", "late") + b"\n"

    def older_trainctl_appends(name: str) -> None:
        if name == "staged":
            with open(layout.old_events, "ab") as fh:
                fh.write(late)

    report = upgrade.upgrade(layout, step=older_trainctl_appends)
    assert report.left_over_bytes == len(late) and layout.old_events.exists()
    assert upgrade.upgrade(layout).left_over_bytes == len(late), "never converted twice"
    read = events.read(layout)
    assert [e["id"] for e in read.events].count("late") == 1 and len(read.events) == 91
    assert [e["id"] for e in events.read(layout, last=1).events] == ["late"]


def test_an_events_jsonl_made_again_after_the_upgrade_is_read_whole(tmp_path):
    layout = v1_base(tmp_path / "b", year_of_events(30))
    upgrade.upgrade(layout)
    layout.old_events.write_bytes(event_line(datetime(2027, 2, 1, tzinfo=UTC), "held", "again") + b"\n")
    assert [e["id"] for e in events.read(layout).events][-1] == "again"
    # Even with the converted file's inode number, another file is not taken for it.
    record = events.read_converted_record(layout)
    with open(layout.old_events, "rb") as fh:
        same_number = {**record, "inode": os.fstat(fh.fileno()).st_ino, "bytes": 10}
        assert events.converted_prefix(fh, same_number) == 0
        assert events.converted_prefix(fh, {**same_number, "tail_sha256": events._tail_digest(fh, 10)}) == 10


def test_a_log_with_no_event_at_all_is_kept_in_the_current_month(tmp_path):
    layout = v1_base(tmp_path / "b", b"garbage\n\n{torn")
    report = upgrade.upgrade(layout)
    assert len(report.months) == 1 and events.read(layout).unreadable_lines == 2
    assert not layout.old_events.exists()


def test_a_full_disk_during_the_upgrade_leaves_the_old_log_in_charge(small_tmpfs):
    data = year_of_events(2000)  # ~700 KB: the split needs as much again
    root = small_tmpfs(f"{(len(data) + 200_000) // 1024}k")
    layout = v1_base(root / "b", data)
    expected = single_file_read(layout.old_events)
    with pytest.raises(OSError):
        upgrade.upgrade(layout)
    assert layout.old_events.read_bytes() == data and not (layout.tmp / upgrade.STAGING_NAME).exists()
    assert events.read(layout).events == expected.events


APPENDER = """
import sys
from trainer.spool import events
from trainer.spool.layout import Layout
from trainer.eventkinds import Event

layout = Layout(__import__("pathlib").Path(sys.argv[1]))
print("go", flush=True)
for n in range(int(sys.argv[2])):
    events.append(layout, Event.HELD, f"live-{n}")
"""


def test_trainctl_appending_while_the_daemon_upgrades_loses_and_repeats_nothing(tmp_path):
    layout = v1_base(tmp_path / "b", year_of_events(3000))
    expected = single_file_read(layout.old_events).events
    appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(layout.root), "3000"], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
    assert appender.stdout.readline() == "go\n"
    upgrade.upgrade(layout)  # the events/ dir is made by whichever of the two comes first
    assert appender.wait(120) == 0
    appender.stdout.close()
    found = events.read(layout).events
    assert [e for e in found if not e["id"].startswith("live-")] == expected
    assert [e["id"] for e in found if e["id"].startswith("live-")] == [f"live-{n}" for n in range(3000)]
