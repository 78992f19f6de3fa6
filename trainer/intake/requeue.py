"""Queueing again, after a rollback, the items the abandoned line trained: copies of their data
from done/, exactly once whatever crashes.

Each copy's id is a function of the rollback request and the original item (the request's
time, plus one microsecond per item so that they keep their training order, and a hash of
the request id and the original id), so doing the whole list again after a crash queues only
the copies that are not there yet. Each copy is validated and published like any enqueued
file (staged in tmp/, its ``enqueued`` event, one rename).
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta

from trainer.config import SpoolConfig
from trainer.errors import NoSuchItem
from trainer.eventkinds import Event
from trainer.intake.enqueue import copy_validated, new_meta
from trainer.spool import events, queue
from trainer.spool.fsutil import StagingDir, rename_durably, write_atomic
from trainer.spool.item import DATA_NAME, META_NAME
from trainer.spool.layout import Layout
from trainer.states import ItemState, Priority

SOURCE = "rollback"  # meta.json's "source" of a copy queued again by a rollback


def copy_id(at: datetime, index: int, request_id: str, original: str) -> str:
    moment = at + timedelta(microseconds=index)
    digest = hashlib.sha256(f"{request_id}:{original}".encode()).hexdigest()[:8]
    return moment.strftime("%Y%m%dT%H%M%S.%fZ-") + digest


def _exists(layout: Layout, item_id: str) -> bool:
    try:
        queue.find(layout, item_id)
    except NoSuchItem:
        return False
    return True


def queue_copies(layout: Layout, entries: list[dict], *, request_id: str, at: datetime, version: str,
                 limits: SpoolConfig) -> tuple[list[tuple[str, str]], list[str]]:
    """Queue a copy of each entry's item (lineage entries, in order); returns (copy id,
    original id) for each copy and, for the items that could not be copied, why (no longer in
    done/, not done, data changed)."""
    queued, skipped = [], []
    for index, entry in enumerate(entries):
        original = str(entry.get("id"))
        new = copy_id(at, index, request_id, original)
        if _exists(layout, new):
            queued.append((new, original))  # queued before a crash
            continue
        try:
            item = queue.find(layout, original)
        except NoSuchItem:
            skipped.append(f"{original}: no longer in the queue's done/ (removed)")
            continue
        if item.state is not ItemState.DONE or item.meta is None:
            skipped.append(f"{original}: {item.state.value}, not done: it is not copied (it trains on its own)")
            continue
        if item.meta.sha256 != entry.get("sha256"):
            skipped.append(f"{original}: its data in done/ is not what trained (sha256 differs)")
            continue
        _queue_copy(layout, item, new, version, limits)
        queued.append((new, original))
    return queued, skipped


def _queue_copy(layout: Layout, item, new: str, version: str, limits: SpoolConfig) -> None:
    priority = item.meta.priority if isinstance(item.meta.priority, Priority) else Priority.NORMAL
    with StagingDir(layout.tmp, f"requeue-{new}") as stage:
        fd = os.open(item.data_path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.mkdir(stage.path / new)
            report = copy_validated(fd, stage.path / new / DATA_NAME, limits)
        finally:
            os.close(fd)
        meta = new_meta(new, item.meta.name, SOURCE, report, priority)
        write_atomic(stage.path / new, stage.path / new / META_NAME, meta.to_json())
        events.append_first(layout, [(Event.ENQUEUED, new, {
            "name": meta.name, "priority": priority.value, "records": meta.records, "size": meta.size,
            "sha256": meta.sha256, "held": False, "requeued_from": item.id, "rollback_to": version})])
        rename_durably(stage.path / new, layout.pending(priority) / new)
        # The staging dir itself, now empty, is removed on leaving (as enqueue_batch's is).
