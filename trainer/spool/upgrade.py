"""The upgrade from format 1: the single ``events.jsonl`` becomes monthly segments.

Run by the daemon at start, under its lock (one upgrader at a time), before recovery:

1. FORMAT says version 2, so an older trainer started from now on refuses the base dir
   instead of appending to an ``events.jsonl`` that nothing reads any more.
2. ``events.jsonl`` as it is now (S bytes) is split by month, bytes unchanged, into the
   locked staging dir ``tmp/events-v1/``, with ``upgrade.json``: S, the file's inode and a
   digest of its last bytes. Everything is fsynced.
3. One rename publishes it as ``events/v1/``. From then on readers read the parts, and skip
   the first S bytes of ``events.jsonl`` for as long as it is still there and still that file.
4. ``events.jsonl`` is removed, if it is still that file and still S bytes long.

Killed at any point (kill -9, power loss): before 3, ``events.jsonl`` is untouched and the
staging dir is debris, removed by the next run, which splits again; after 3, the next run
does 4. Readers see every event exactly once throughout (``events.segments`` says why).

This release never appends to ``events.jsonl``: its events go to the month's segment from the
first one, whatever the upgrade's progress. Bytes an older trainctl still running appended
to ``events.jsonl`` after step 2 stay there, read by every reader after the parts (step 4
leaves such a file alone): nothing is lost, and FORMAT keeps any newer old process out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import orjson

from trainer.spool import events
from trainer.spool.fsutil import FILE_MODE, StagingDir, fsync_dir, is_locked_by_someone, make_group_dir
from trainer.spool.layout import FORMAT_VERSION, Layout, format_version, write_format
from trainer.timefmt import iso, utc_now

STAGING_NAME = "events-v1"
MAX_OPEN_PARTS = 32  # months written at once while splitting (a log is in time order: ~1)


@dataclass
class UpgradeReport:
    format_bumped: bool = False
    converted_bytes: int | None = None  # bytes of events.jsonl split into events/v1/ by this run
    months: list[str] = field(default_factory=list)
    removed_old_log: bool = False
    left_over_bytes: int = 0  # in events.jsonl, appended by an older trainer after the split


def needed(layout: Layout) -> bool:
    return format_version(layout) != FORMAT_VERSION or os.path.lexists(layout.old_events)


def old_log_bytes(layout: Layout) -> int:
    try:
        return os.lstat(layout.old_events).st_size
    except FileNotFoundError:
        return 0


def upgrade(layout: Layout, *, step: Callable[[str], None] = lambda name: None) -> UpgradeReport:
    """Bring a format-1 base dir to format 2; does what is left of an interrupted upgrade, and
    nothing on a base dir already upgraded. ``step`` is called after each durable step
    ("format", "split" as each month after the first begins, "staged", "published", "removed"):
    the kill tests stop the process there."""
    report = UpgradeReport()
    if format_version(layout) != FORMAT_VERSION:
        write_format(layout)
        report.format_bumped = True
        step("format")
    if not os.path.isdir(layout.converted_events):
        _convert(layout, report, step)
    if os.path.isdir(layout.converted_events):
        _remove_old_log(layout, report, step)
    return report


def _convert(layout: Layout, report: UpgradeReport, step: Callable[[str], None]) -> None:
    try:
        fd = os.open(layout.old_events, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "rb") as old:
        staging = layout.tmp / STAGING_NAME
        if is_locked_by_someone(staging):
            return  # another upgrader at work (cannot be under the daemon lock): leave it to it
        shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
        with contextlib.suppress(FileExistsError):
            make_group_dir(layout.events_dir)
        with StagingDir(layout.tmp, STAGING_NAME) as parts:
            size, report.months = split_by_month(old, parts.path, fallback=events.month_of(utc_now()),
                                                 next_month=lambda: step("split"))
            record = {**events.converted_record(old, size), "from": layout.old_events.name, "at": iso(utc_now())}
            _write_durably(parts.path / events.CONVERTED_RECORD, orjson.dumps(record) + b"\n")
            fsync_dir(parts.path)
            step("staged")
            parts.publish(layout.converted_events)
        report.converted_bytes = size
        step("published")


def _remove_old_log(layout: Layout, report: UpgradeReport, step: Callable[[str], None]) -> None:
    try:
        fd = os.open(layout.old_events, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "rb") as old:
        converted = events.converted_prefix(old, events.read_converted_record(layout))
        size = os.fstat(old.fileno()).st_size
    if converted and size == converted:
        # An older trainctl appending between this check and the unlink would lose its line,
        # as it would if it held the file open across the unlink: both need one still running
        # since before FORMAT said 2, writing in this very microsecond.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.old_events)
        fsync_dir(layout.root)
        report.removed_old_log = True
        step("removed")
    else:
        report.left_over_bytes = size - converted


def split_by_month(old: BinaryIO, directory: Path, *, fallback: str,
                   next_month: Callable[[], None] = lambda: None) -> tuple[int, list[str]]:
    """Write each line of ``old`` to ``directory/YYYY-MM.jsonl`` for its event's UTC month,
    bytes unchanged; returns the bytes read and the months written.

    A line that is no event (torn, garbage, blank) goes with the line before it, and at the
    start with the first event (``fallback``: the month when there is none), so that every
    byte lands somewhere and the readers count the same unreadable lines. ``next_month`` is
    called as each month after the first begins.
    """
    writer = _PartWriter(directory, next_month)
    size = 0
    month = None
    try:
        for line in old:
            size += len(line)
            record = events.parse_line(line)
            dated = events.stamp_month(record["t"]) if record is not None else None
            if dated is not None:
                month = dated
            writer.write(month, line)
        return size, writer.finish(fallback)
    finally:
        writer.close()


class _PartWriter:
    """Appends lines to one part file per month, keeping a few open; the lines before the
    first event wait in a head file that becomes that event's month."""

    HEAD = ".head"

    def __init__(self, directory: Path, next_month: Callable[[], None]) -> None:
        self.directory = directory
        self.next_month = next_month
        self.open: dict[str | None, BinaryIO] = {}  # in least recently used order
        self.months: set[str] = set()

    def write(self, month: str | None, line: bytes) -> None:
        fh = self.open.pop(month, None)
        if fh is None:
            fh = self._open(month)
        self.open[month] = fh
        fh.write(line)

    def _open(self, month: str | None) -> BinaryIO:
        if len(self.open) >= MAX_OPEN_PARTS:
            self.open.pop(next(iter(self.open))).close()
        if month is not None and month not in self.months:
            if self.months:
                self.next_month()
            self.months.add(month)
            self._adopt_head(month)
        path = self.directory / (self.HEAD if month is None else events.segment_name(month))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # read by the group, never appended to
        return os.fdopen(fd, "ab")

    def _adopt_head(self, month: str) -> None:
        """The first event's month takes the lines that came before it."""
        head = self.open.pop(None, None)
        if head is not None:
            head.close()
            os.rename(self.directory / self.HEAD, self.directory / events.segment_name(month))

    def finish(self, fallback: str) -> list[str]:
        """Everything written and fsynced; the months written, oldest first."""
        if None in self.open:  # no event at all: the lines go to the fallback month
            self.months.add(fallback)
            self._adopt_head(fallback)
        self.close()
        for month in self.months:
            fd = os.open(self.directory / events.segment_name(month), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return sorted(self.months)

    def close(self) -> None:
        """Close every part (a full disk can fail the last flush: raised once all are closed)."""
        parts, self.open = list(self.open.values()), {}
        with contextlib.ExitStack() as closing:
            for fh in parts:
                closing.callback(fh.close)


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
