"""Cleaning ``tmp/`` after a crash, without touching the work of live writers.

Run by the daemon before it reports ready. A staging entry whose flock is still held
belongs to a live process (a trainctl enqueue in progress) and is left alone; so is one
younger than ``min_age_s`` (its writer may be between creating and locking it, a window of microseconds). Everything else is
debris, except a half-ingested inbox file: that is the user's only copy, so it goes back
to the inbox.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.spool import events
from trainer.spool.fsutil import is_locked_by_someone
from trainer.spool.item import DATA_NAME
from trainer.spool.layout import Layout
from trainer.spool.origin import ORIGIN_NAME, origin_name, restore_to_inbox
from trainer.states import Event


@dataclass
class SweepReport:
    restored: list[str] = field(default_factory=list)  # names given back to the inbox


def _origin_name(staging: Path) -> str | None:
    try:
        return origin_name((staging / ORIGIN_NAME).read_bytes())
    except OSError:
        return None


def sweep_tmp(layout: Layout, min_age_s: float = 2.0, now: float | None = None) -> SweepReport:
    report = SweepReport()
    now = time.time() if now is None else now
    with os.scandir(layout.tmp) as entries:
        listed = list(entries)
    for entry in listed:
        path = layout.tmp / entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if now - st.st_mtime < min_age_s or is_locked_by_someone(path):
            continue
        if entry.is_dir(follow_symlinks=False):
            # A removed item (renamed to ID.removed before deletion) is never given back,
            # whatever it holds: the user asked for it to go.
            origin = None if entry.name.endswith(".removed") else _origin_name(path)
            data = path / DATA_NAME
            if origin is not None and os.path.lexists(data):
                restored = restore_to_inbox(layout, data, origin)
                events.append(layout, Event.RESTORED, None, name=restored, staging=entry.name)
                report.restored.append(restored)
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return report
