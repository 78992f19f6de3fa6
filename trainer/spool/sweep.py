"""Cleaning ``tmp/`` after a crash, without touching the work of live writers.

Run by the daemon before it reports ready. A staging entry whose flock is still held
belongs to a live process (a trainctl enqueue in progress) and is left alone; so is one that
changes or appears while the sweep watches ``tmp/`` for ``min_age_s`` (its writer may be
between creating and locking it, a window of microseconds, or writing a small file it is
about to rename). That watch is on the monotonic clock: an entry's mtime, read against the
wall clock, would make a live writer's entry look old after a forward jump, and keep a dead
one's (a user's only copy of an inbox file among them) after a jump back. Everything else is
debris, except a half-ingested inbox file: that is the user's only copy, so it goes back to
the inbox.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer.eventkinds import Event
from trainer.spool import events
from trainer.spool.fsutil import is_locked_by_someone
from trainer.spool.item import DATA_NAME
from trainer.spool.layout import Layout
from trainer.spool.origin import ORIGIN_NAME, origin_name, restore_to_inbox


@dataclass
class SweepReport:
    restored: list[str] = field(default_factory=list)  # names given back to the inbox


def _origin_name(staging: Path) -> str | None:
    try:
        return origin_name((staging / ORIGIN_NAME).read_bytes())
    except OSError:
        return None


def _unlocked_entries(layout: Layout) -> dict[str, tuple[int, int, int]]:
    """Entries of tmp/ no process holds a lock on, with what would change if one were written."""
    found = {}
    with os.scandir(layout.tmp) as entries:
        listed = list(entries)
    for entry in listed:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not is_locked_by_someone(layout.tmp / entry.name):
            found[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def sweep_tmp(layout: Layout, min_age_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> SweepReport:
    """Remove (or give back) what no live process is working on: what stayed unlocked and
    unchanged while watched for ``min_age_s`` (a wait only when there is something to watch)."""
    report = SweepReport()
    before = _unlocked_entries(layout)
    if before and min_age_s > 0:
        sleep(min_age_s)  # time.sleep runs on the monotonic clock
    after = _unlocked_entries(layout)
    with os.scandir(layout.tmp) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        if name in after and before.get(name) == after[name]:  # else locked, or changed: a writer is at work
            _remove(layout, name, report)
    return report


def _remove(layout: Layout, name: str, report: SweepReport) -> None:
    path = layout.tmp / name
    if path.is_dir() and not path.is_symlink():
        # A removed item (renamed to ID.removed before deletion) is never given back,
        # whatever it holds: the user asked for it to go.
        origin = None if name.endswith(".removed") else _origin_name(path)
        data = path / DATA_NAME
        if origin is not None and os.path.lexists(data):
            restored = restore_to_inbox(layout, data, origin)
            events.append(layout, Event.RESTORED, None, name=restored, staging=name)
            report.restored.append(restored)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
