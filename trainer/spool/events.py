"""The append-only event log: one JSON object a line, ``events.jsonl`` in the base dir.

Each event is one ``write()`` on an ``O_APPEND`` descriptor, so concurrent writers never
interleave within a line (Linux serialises appends to a regular file). A crash can leave a
torn last line; readers skip any line that does not parse and count it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from trainer.spool.layout import Layout
from trainer.states import Event
from trainer.timefmt import iso, parse_iso, utc_now


def append(layout: Layout, event: Event, item_id: str | None, **details: object) -> None:
    record = {"t": iso(utc_now()), "event": event.value, "id": item_id, **details}
    line = orjson.dumps(record) + b"\n"
    # Every trainctl user appends here: created group-writable (init does it; this is the
    # fallback for a base dir whose log was deleted).
    # O_NOFOLLOW: a symlink put in its place must not make us append to another file.
    fd = os.open(layout.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o660)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@dataclass
class EventLog:
    """What a read of the log found: the events, and how many lines could not be parsed."""

    events: list[dict] = field(default_factory=list)
    unreadable_lines: int = 0


def _parse(line: bytes) -> dict | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("t"), str):
        return None
    if not isinstance(record.get("event"), str):
        return None
    return record


def _lines(path: os.PathLike) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from fh


def _lines_backwards(path: os.PathLike, block: int = 1 << 16) -> Iterator[bytes]:
    """The file's lines, last first, reading blocks from the end: the newest events of a log
    that has grown for a year (hundreds of MB) cost what the newest block costs."""
    with open(path, "rb") as fh:
        position = fh.seek(0, os.SEEK_END)
        tail = b""
        while position > 0:
            step = min(block, position)
            position -= step
            fh.seek(position)
            lines = (fh.read(step) + tail).split(b"\n")
            tail = lines.pop(0)  # may continue in the block before
            yield from reversed(lines)
        yield tail


def read(layout: Layout, since: datetime | None = None, item_id: str | None = None,
         last: int | None = None) -> EventLog:
    """Events in log order, optionally those at or after ``since`` and about ``item_id``;
    with ``last``, only the last that many of those (read from the end of the log)."""
    log = EventLog()
    since_text = iso(since) if since is not None else None
    try:
        lines = _lines(layout.events) if last is None else _lines_backwards(layout.events)
        for line in lines:
            if not line.strip():
                continue
            record = _parse(line)
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
    except FileNotFoundError:
        pass
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
