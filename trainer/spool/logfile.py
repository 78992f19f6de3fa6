"""Reading the daemon's log file (``logs/trainer.log`` and its rotations) for ``trainctl logs``.

The daemon writes it outside systemd (``trainer/daemon/logs.py``); ``run/log.json`` says
whether it does. A record is a line that starts with its time, plus the lines that follow
without one (a traceback); filters apply to whole records. Rotation renames ``trainer.log``
to ``trainer.log.1`` (and so on up): ``follow`` notices and goes on in the new file.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from trainer.spool.layout import Layout

TIME = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4}) ")
FOLLOW_POLL_S = 0.2


@dataclass(frozen=True)
class Record:
    text: str  # one or more lines, without the final newline

    @property
    def at(self) -> datetime | None:
        match = TIME.match(self.text.encode())
        return datetime.strptime(match.group(1).decode(), "%Y-%m-%d %H:%M:%S%z") if match else None


@dataclass(frozen=True)
class Filter:
    item_id: str | None = None
    since: datetime | None = None  # aware

    def __call__(self, record: Record) -> bool:
        if self.item_id is not None and self.item_id not in record.text:
            return False
        if self.since is not None:
            at = record.at
            return at is not None and at >= self.since
        return True


def target(layout: Layout) -> dict | None:
    """What the daemon wrote in ``run/log.json`` (None: no daemon of this release ran here)."""
    try:
        data = orjson.loads(layout.log_target.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def files(layout: Layout) -> list[Path]:
    """The log file and its rotations that exist, oldest first."""
    rotated = []
    for path in layout.logs_dir.glob(f"{layout.log_file.name}.*"):
        suffix = path.name.rpartition(".")[2]
        if suffix.isdigit():
            rotated.append((int(suffix), path))
    found = [path for _, path in sorted(rotated, reverse=True)]
    return found + ([layout.log_file] if layout.log_file.exists() else [])


def records(data: bytes) -> list[Record]:
    out: list[list[bytes]] = []
    for line in data.splitlines():
        if TIME.match(line) or not out:
            out.append([line])
        else:
            out[-1].append(line)
    return [Record(b"\n".join(lines).decode("utf-8", "replace")) for lines in out]


def last(layout: Layout, n: int, keep: Callable[[Record], bool]) -> tuple[list[Record], int]:
    """The last ``n`` records that ``keep`` accepts, oldest first, and the size of the current
    file when read (where ``follow`` goes on). Reads the newest files first, only as far back
    as it needs."""
    chosen: deque[Record] = deque()
    paths = files(layout)
    offset = 0
    for path in reversed(paths):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # rotated away meanwhile: its lines are in the next one
            continue
        if path == layout.log_file:
            offset = len(data)
        for record in reversed(records(data)):
            if len(chosen) >= n:
                break
            if keep(record):
                chosen.appendleft(record)
        if len(chosen) >= n:
            break
    return list(chosen), offset


def follow(path: Path, offset: int, keep: Callable[[Record], bool], *,
           poll_s: float = FOLLOW_POLL_S) -> Iterator[Record]:
    """Records appended to ``path`` from ``offset`` on, forever (tail -F): after a rotation it
    reads what is left of the old file, then the new one from its start."""
    fh, pending, shown, draining = None, b"", False, False
    while True:
        if fh is None:
            try:
                fh = open(path, "rb")
                fh.seek(offset if offset <= os.fstat(fh.fileno()).st_size else 0)
                offset = 0  # a reopened file (after a rotation) is read from its start
            except FileNotFoundError:
                time.sleep(poll_s)
                continue
        chunk = fh.read()
        if chunk:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                if TIME.match(line):
                    shown = keep(Record(line.decode("utf-8", "replace")))
                if shown:
                    yield Record(line.decode("utf-8", "replace"))
            continue
        if draining:  # read once more after noticing the rotation: nothing written before it is lost
            fh.close()
            fh, draining = None, False
            continue
        if _replaced(fh, path):
            draining = True
            continue
        if fh.tell() > os.fstat(fh.fileno()).st_size:  # truncated in place
            fh.seek(0)
        time.sleep(poll_s)


def _replaced(fh, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False  # between the rename and the new file: keep reading the old one
    own = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)
