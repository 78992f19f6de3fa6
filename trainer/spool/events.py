"""The append-only event log: one JSON object a line, one segment per UTC month.

    events/2026-11.jsonl      the events whose ``t`` falls in November 2026 (UTC)
    events/v1/2026-10.jsonl   format 1's single ``events.jsonl``, split by month on upgrade

Each event is one ``write()`` on an ``O_APPEND`` descriptor of its month's segment, so
concurrent writers never interleave within a line (Linux serialises appends to a regular
file). A line is whole or absent (``fsutil.append_to``): one that only partly fits on a full
disk is cut back off, and one a crash left torn is ended before the next is written;
readers skip any line that does not parse and count it.

The log records changes already made: a disk that refuses a line (full, over quota,
read-only) must not make the change look failed, so the line waits in this process and goes
out, in order and with its own time, before the next one or at ``flush``.

Log order is segment order, then line order: the converted parts (by month), what is left of
a format-1 ``events.jsonl`` (only until the daemon has upgraded the base dir), then the live
segments (by month). Readers open only the segments they need: ``since`` and an item id (it
starts with the item's enqueue time) name the first month that can hold a match, and ``last``
reads the newest segments backwards and stops after that many events.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import orjson

from trainer.eventkinds import Event
from trainer.ids import id_time, is_id
from trainer.spool.fsutil import DISK_ERRNOS, append_to, make_group_dir, read_regular, unlink_durably
from trainer.spool.layout import Layout
from trainer.timefmt import iso, parse_iso, utc_now

SEGMENT_NAME = re.compile(r"([0-9]{4}-(?:0[1-9]|1[0-2]))\.jsonl")
SEGMENT_MODE = 0o660  # every trainctl user appends: group-writable, whoever made the segment
CONVERTED_RECORD = "upgrade.json"  # in events/v1/: which bytes of events.jsonl the parts hold
TAIL_BYTES = 4096  # how much of the converted file's end identifies it (a whole last line)
BACKWARD_BLOCK = 1 << 16


# --- which segment ---------------------------------------------------------------------------

def month_of(moment: datetime) -> str:
    """The segment an event at ``moment`` belongs to: its UTC month, ``YYYY-MM``."""
    utc = moment.astimezone(timezone.utc)
    return f"{utc.year:04d}-{utc.month:02d}"


def stamp_month(stamp: str) -> str | None:
    """The UTC month of an event's ``t`` as written; None if it is not a time."""
    if len(stamp) == 32 and stamp.endswith("+00:00") and SEGMENT_NAME.fullmatch(stamp[:7] + ".jsonl"):
        return stamp[:7]  # ours: 2026-11-28T20:00:14.285979+00:00
    try:
        return month_of(parse_iso(stamp))
    except (ValueError, OverflowError):
        return None


def segment_name(month: str) -> str:
    return f"{month}.jsonl"


def first_month(since: datetime | None, item_id: str | None) -> str | None:
    """The oldest month that can hold a matching event; None: every month.

    An item's events start when it was enqueued, and its id starts with that time. (A clock
    set back across a month's start after the enqueue could log one earlier: not looked for.)
    """
    months = []
    if since is not None:
        months.append(month_of(since))
    if item_id is not None and is_id(item_id):
        months.append(month_of(id_time(item_id)))
    return max(months, default=None)


# --- appending -------------------------------------------------------------------------------

def append(layout: Layout, event: Event, item_id: str | None, **details: object) -> None:
    """Append an event line; if the disk refuses it, it waits (see the module's docstring)."""
    _waiting.setdefault(layout.events_dir, []).append(_line(event, item_id, details))
    flush(layout)


def append_first(layout: Layout, entries: list[tuple[Event, str | None, dict]]) -> None:
    """Append these event lines now, in one write, or raise the disk's error with none written.

    For a change made only once its record is on disk: ``trainctl enqueue`` writes its
    ``enqueued`` lines before the renames that queue the items, so a full disk refuses the
    whole batch, and no line is lost with a process that exits before the disk has room.
    """
    flush(layout)
    lines = [_line(event, item_id, details) for event, item_id, details in entries]
    if lines:
        _append_line(layout, lines[0][0], b"".join(text for _, text in lines))


# Event lines the disk refused, per log, oldest first, each with its segment's name. A
# process that ends with some here says so (trainctl on stderr, the daemon in its journal):
# the changes they record are on disk.
_waiting: dict[Path, list[tuple[str, bytes]]] = {}


def flush(layout: Layout) -> int:
    """Write the event lines the disk refused so far; how many still wait."""
    lines = _waiting.get(layout.events_dir, [])
    while lines:
        name, text = lines[0]
        try:
            _append_line(layout, name, text)
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                lines.pop(0)  # not the disk (a symlink in its place...): the caller hears of it
                raise
            return len(lines)
        lines.pop(0)
    return 0


def waiting(layout: Layout) -> list[bytes]:
    """The event lines still waiting for the disk (see ``append``)."""
    return [text for _, text in _waiting.get(layout.events_dir, [])]


def unrecorded() -> list[bytes]:
    """Every event line this process could not write, whatever its base dir."""
    return [text for lines in _waiting.values() for _, text in lines]


def _line(event: Event, item_id: str | None, details: dict) -> tuple[str, bytes]:
    """An event line stamped now, and the segment it belongs to."""
    at = utc_now()
    record = {"t": iso(at), "event": event.value, "id": item_id, **details}
    return segment_name(month_of(at)), orjson.dumps(record) + b"\n"


def _append_line(layout: Layout, name: str, line: bytes) -> None:
    """The one place lines are written: at the end of segment ``name``, whole or not at all.

    Neither ``events/`` nor the segment is ever followed if a symlink was put in its place:
    we must not append to another file.
    """
    dir_fd = _open_events_dir(layout)
    try:
        fd = _open_segment(name, dir_fd)
        try:
            append_to(fd, line, layout.events_dir / name)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _open_events_dir(layout: Layout) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(layout.events_dir, flags)
    except FileNotFoundError:
        # A format-1 base dir before its upgrade (or one whose events/ was deleted).
        with contextlib.suppress(FileExistsError):
            make_group_dir(layout.events_dir)
        return os.open(layout.events_dir, flags)


def _open_segment(name: str, dir_fd: int) -> int:
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW  # read: append_to looks at the last byte
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, SEGMENT_MODE, dir_fd=dir_fd)
    except FileExistsError:  # another writer made it just now
        return os.open(name, flags, dir_fd=dir_fd)
    # The first event of the month makes the segment: with the group's mode, not this
    # writer's umask, or the next trainctl user could not append.
    os.fchmod(fd, SEGMENT_MODE)
    return fd


# --- the segments ----------------------------------------------------------------------------

@dataclass
class Segment:
    """One file of the log, read from byte ``start``. ``month`` None: format 1's events.jsonl,
    which holds any month (read whole, or from where its converted part ends)."""

    path: Path
    month: str | None
    start: int = 0
    fh: BinaryIO | None = None  # already open (format 1's log: see segments)


def segments(layout: Layout, stack: contextlib.ExitStack) -> list[Segment]:
    """Every segment, in log order; an open file stays open until ``stack`` closes.

    Format 1's log is opened before ``events/v1/`` is looked at: the upgrade publishes
    ``events/v1/`` (one rename) before it removes ``events.jsonl``, so a reader that finds no
    ``events.jsonl`` finds the parts, and one that holds it open either finds no parts (and
    reads it whole) or finds the record of which of its bytes the parts hold (and skips
    them). No event is read twice or missed, at any point of the upgrade.
    """
    old = _open_old_log(layout, stack)
    converted = _month_files(layout.converted_events)
    found = list(converted or [])
    if old is not None:
        start = converted_prefix(old, read_converted_record(layout)) if converted is not None else 0
        found.append(Segment(layout.old_events, None, start, fh=old))
    return found + (_month_files(layout.events_dir) or [])


def months(layout: Layout) -> list[str]:
    """Every month with a segment (live or converted from format 1), oldest first."""
    found = (_month_files(layout.events_dir) or []) + (_month_files(layout.converted_events) or [])
    return sorted({segment.month for segment in found})


def _month_files(directory: Path) -> list[Segment] | None:
    """The month segments in ``directory`` by month; None if there is no such directory."""
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if e.is_file(follow_symlinks=False) and SEGMENT_NAME.fullmatch(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [Segment(directory / name, name.removesuffix(".jsonl")) for name in sorted(names)]


def _open_old_log(layout: Layout, stack: contextlib.ExitStack) -> BinaryIO | None:
    try:
        fd = os.open(layout.old_events, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    return stack.enter_context(os.fdopen(fd, "rb"))


# --- what the upgrade from format 1 converted (written by trainer.spool.upgrade) -------------

def converted_record(fh: BinaryIO, size: int) -> dict:
    """What identifies the first ``size`` bytes of format 1's log once they are converted:
    the file (inode) and a digest of their end, so that a later events.jsonl that got the
    same inode number is never taken for it."""
    return {"bytes": size, "inode": os.fstat(fh.fileno()).st_ino, "tail_sha256": _tail_digest(fh, size)}


def converted_prefix(fh: BinaryIO, record: dict | None) -> int:
    """How many leading bytes of the open format-1 log ``fh`` the converted parts hold: the
    recorded size if it is the converted file, else 0 (all of it is still to be read)."""
    if record is None:
        return 0
    size = record.get("bytes")
    st = os.fstat(fh.fileno())
    if not isinstance(size, int) or st.st_ino != record.get("inode") or st.st_size < size:
        return 0
    return size if _tail_digest(fh, size) == record.get("tail_sha256") else 0


def _tail_digest(fh: BinaryIO, end: int) -> str:
    import hashlib  # only while an upgrade is unfinished: ~2 ms of every trainctl start-up otherwise

    start = max(0, end - TAIL_BYTES)
    return hashlib.sha256(os.pread(fh.fileno(), end - start, start)).hexdigest()


def read_converted_record(layout: Layout) -> dict | None:
    try:
        record = orjson.loads(read_regular(layout.converted_events / CONVERTED_RECORD, 1 << 12))
    except (OSError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


# --- reading ---------------------------------------------------------------------------------

@dataclass
class EventLog:
    """What a read of the log found: the events, and how many lines could not be parsed
    (in the segments read)."""

    events: list[dict] = field(default_factory=list)
    unreadable_lines: int = 0


def parse_line(line: bytes) -> dict | None:
    """The event on ``line``; None if it is not one (torn, garbage, blank)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("t"), str):
        return None
    if not isinstance(record.get("event"), str):
        return None
    return record


def _lines(segment: Segment) -> Iterator[bytes]:
    with contextlib.ExitStack() as stack:
        fh = segment.fh or _open_segment_file(segment, stack)
        if fh is None:
            return
        fh.seek(segment.start)
        yield from fh


def _lines_backwards(segment: Segment, block: int) -> Iterator[bytes]:
    """The segment's lines, last first, reading blocks from the end: the newest events cost
    what the newest block costs, however long the segment."""
    with contextlib.ExitStack() as stack:
        fh = segment.fh or _open_segment_file(segment, stack)
        if fh is None:
            return
        position = fh.seek(0, os.SEEK_END)
        tail = b""
        while position > segment.start:
            step = min(block, position - segment.start)
            position -= step
            fh.seek(position)
            lines = (fh.read(step) + tail).split(b"\n")
            tail = lines.pop(0)  # may continue in the block before
            yield from reversed(lines)
        yield tail


def _open_segment_file(segment: Segment, stack: contextlib.ExitStack) -> BinaryIO | None:
    try:
        return stack.enter_context(open(segment.path, "rb"))
    except FileNotFoundError:  # removed by retention since it was listed
        return None


def read(layout: Layout, since: datetime | None = None, item_id: str | None = None,
         last: int | None = None) -> EventLog:
    """Events in log order, optionally those at or after ``since`` and about ``item_id``;
    with ``last``, only the last that many of those (read from the end of the log)."""
    log = EventLog()
    since_text = iso(since) if since is not None else None
    oldest = first_month(since, item_id)
    with contextlib.ExitStack() as stack:
        chosen = [s for s in segments(layout, stack) if s.month is None or oldest is None or s.month >= oldest]
        if last is None:
            lines = (line for segment in chosen for line in _lines(segment))
        else:
            lines = (line for segment in reversed(chosen) for line in _lines_backwards(segment, BACKWARD_BLOCK))
        for line in lines:
            if not line.strip():
                continue
            record = parse_line(line)
            if record is None:
                log.unreadable_lines += 1
                continue
            if since_text is not None and not _at_or_after(record["t"], since, since_text):
                continue
            if item_id is not None and record.get("id") != item_id:
                continue
            log.events.append(record)
            if last is not None and len(log.events) >= last:
                break
    if last is not None:
        log.events.reverse()
    return log


def _at_or_after(stamp: str, since: datetime, since_text: str) -> bool:
    # Our own stamps compare as text (same format, UTC); anything else is parsed.
    if len(stamp) == len(since_text) and stamp.endswith("+00:00"):
        return stamp >= since_text
    try:
        return parse_iso(stamp) >= since
    except ValueError:
        return False


# --- retention -------------------------------------------------------------------------------

def expired_months(existing: list[str], current: str, keep_months: int) -> list[str]:
    """The months whose segments retention removes: those before the current month and the
    ``keep_months`` whole months before it. Never one of the newest ``keep_months + 1``
    months that have a segment, so a clock set years ahead cannot empty the log. 0 keeps all."""
    if keep_months <= 0:
        return []
    cutoff = _months_before(current, keep_months)
    ordered = sorted(existing)
    protected = set(ordered[-(keep_months + 1):])
    return [month for month in ordered if month < cutoff and month not in protected]


def _months_before(month: str, count: int) -> str:
    index = int(month[:4]) * 12 + int(month[5:7]) - 1 - count
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def remove_month(layout: Layout, month: str) -> None:
    """Remove a month's segments (live, and converted from format 1), durably."""
    name = segment_name(month)
    if not SEGMENT_NAME.fullmatch(name):
        raise ValueError(f"not a segment month: {month!r}")
    for directory in (layout.events_dir, layout.converted_events):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            unlink_durably(directory / name)
