"""The spool: a queue of items as directories, moved between states by atomic renames.

Functions over a ``Layout``, no classes with state. New items come in through
``trainer.intake.enqueue`` (staged in ``tmp/``, published with one rename, no lock). Every change to an existing
item (claim, hold, retry, ...) runs under the spool lock, a brief exclusive flock, so
concurrent trainctl processes and the daemon never lose an update or an item. Readers
(status, list) take no lock: every state they can see is a complete one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from trainer.errors import NoSuchItem, WrongState
from trainer.eventkinds import Event
from trainer.ids import check_id
from trainer.spool.fsutil import exclusive_lock, rename_durably, write_atomic
from trainer.spool.layout import Layout, is_candidate_name
from trainer.spool.listing import active_id, counts  # here too: queue.counts, queue.active_id
from trainer.spool.listing import entries as _entries
from trainer.states import ItemState, Priority
from trainer.timefmt import iso, parse_iso, utc_now

if TYPE_CHECKING:
    from pathlib import Path  # only annotations here: `trainctl status` never imports pathlib

    from trainer.spool.item import Item, ItemMeta

_reported_unmovable: set[str] = set()  # logged once per process, not at every poll


def load_item(path: Path | str, state: ItemState, priority: Priority | None) -> Item:
    # The item module on first use, not at import: `trainctl status` with no active item reads
    # no metadata, and building the item dataclasses is ~1.5 ms of its start-up.
    from trainer.spool.item import load_item as load

    return load(path, state, priority)


def _log_event(layout: Layout, event: Event, item_id: str, **details: object) -> None:
    # Imported when a change is logged, not at import: `trainctl status` and `list` read the
    # queue and never write an event, and the event log module is ~1 ms of their start-up.
    from trainer.spool import events

    events.append(layout, event, item_id, **details)


# --- reading -------------------------------------------------------------------------------

def _locations(layout: Layout) -> Iterable[tuple[Path, ItemState, Priority | None]]:
    for priority in Priority.in_service_order():
        yield layout.pending(priority), ItemState.PENDING, priority
    for state in (ItemState.ACTIVE, ItemState.HELD, ItemState.FAILED, ItemState.DONE):
        yield layout.state_dir(state), state, None


def find(layout: Layout, item_id: str) -> Item:
    """The item with this id, wherever it is; ``NoSuchItem`` if there is none."""
    check_id(item_id)
    # A lock-free reader can look in one directory just as the item is renamed into one it
    # has already looked in; a second pass settles that.
    for _ in range(3):
        for directory, state, priority in _locations(layout):
            path = directory / item_id
            if os.path.isdir(path):
                try:
                    return load_item(path, state, priority)
                except FileNotFoundError:
                    continue  # moved away while we read it; look again
    raise NoSuchItem(f"no item {item_id}: see trainctl list --all")


def list_items(layout: Layout, states: Iterable[ItemState]) -> list[Item]:
    """Items in the given states, each state in queue order (oldest first)."""
    wanted = set(states)
    found: list[Item] = []
    seen: set[str] = set()
    for directory, state, priority in _locations(layout):
        if state not in wanted:
            continue
        for item_id in _entries(directory):
            if item_id in seen:
                continue
            try:
                found.append(load_item(directory / item_id, state, priority))
            except FileNotFoundError:
                continue  # moved while listing
            seen.add(item_id)
    return found


def inbox_waiting(layout: Layout) -> int:
    """Inbox files not yet taken, plus those being taken right now (staged with an origin)."""
    from trainer.spool.origin import ORIGIN_NAME  # here: `trainctl status` never asks, nor loads it

    with os.scandir(layout.inbox) as entries:
        count = sum(1 for e in entries if is_candidate_name(e.name) and e.is_file(follow_symlinks=False))
    with os.scandir(layout.tmp) as entries:
        count += sum(1 for e in entries if os.path.lexists(os.path.join(e.path, ORIGIN_NAME)))
    return count


def is_idle(layout: Layout) -> bool:
    """Nothing in the inbox, pending or active: the one definition for the daemon and ``trainctl wait``.

    Read twice: a lock-free reader could look at pending just before an item moves there
    from active, and at active just after.
    """
    for _ in range(2):
        q = counts(layout)
        if q["pending"] or q["active"] or inbox_waiting(layout):
            return False
    return True


def active_item(layout: Layout) -> Item | None:
    """The item the daemon has claimed, with its metadata (a ``PlainLayout`` will do)."""
    item_id = active_id(layout)
    if item_id is None:
        return None
    try:
        return load_item(os.path.join(layout.state_dir(ItemState.ACTIVE), item_id), ItemState.ACTIVE, None)
    except FileNotFoundError:
        return None


# --- changing existing items (always under the spool lock) ---------------------------------

def spool_lock(layout: Layout):
    """The brief exclusive lock every change to an existing item holds."""
    return exclusive_lock(layout.spool_lock)


def _write_meta(layout: Layout, item: Item, meta: ItemMeta) -> None:
    write_atomic(layout.tmp, item.meta_path, meta.to_json())


def _move(layout: Layout, item: Item, state: ItemState, priority: Priority | None = None) -> Item:
    dest_dir = layout.state_dir(state, priority)
    dest = dest_dir / item.id
    if dest != item.path:
        rename_durably(item.path, dest)
    return dataclasses.replace(item, state=state, path=dest, priority=priority or item.priority)


PREVIOUS_META = ".meta.json.previous"  # the metadata a change replaced, until the change is whole


def _move_with_meta(layout: Layout, item: Item, meta: ItemMeta | None, state: ItemState,
                    priority: Priority | None = None) -> Item:
    """Replace the item's metadata (unless ``meta`` is None or the same) and move it: one change.

    The metadata is written first, so a disk that cannot take it (full, read-only) fails the
    change with nothing changed. If the move then fails, the previous meta.json, kept under a
    second name (a hard link: it takes no room), is put back: the item stays where it was with
    the metadata it had, and the same change can simply be made again later.
    """
    if meta is None or meta == item.meta:
        return _move(layout, item, state, priority)
    if item.meta is None:  # the old metadata was unreadable: nothing worth keeping
        _write_meta(layout, item, meta)
        return dataclasses.replace(_move(layout, item, state, priority), meta=meta)
    previous: Path | None = item.path / PREVIOUS_META
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(previous)  # left by a crash mid-change
        os.link(item.meta_path, previous)
    except OSError:
        # protected_hardlinks refuses a link to another user's file we may not write (an
        # item someone enqueued): the change is made without the way back, as it always was.
        previous = None
    try:
        _write_meta(layout, item, meta)
        moved = _move(layout, item, state, priority)
    except BaseException:
        if previous is not None:
            with contextlib.suppress(OSError):
                os.rename(previous, item.meta_path)
        raise
    if previous is not None:
        with contextlib.suppress(OSError):
            os.unlink(moved.path / PREVIOUS_META)
    return dataclasses.replace(moved, meta=meta)


def _change(
    layout: Layout,
    item_id: str,
    allowed: set[ItemState],
    action: str,
    change: Callable[[Item], tuple[Item, Event | None, dict]],
) -> Item:
    """Find the item under the lock, check its state, apply ``change``, log its event."""
    with spool_lock(layout):
        item = find(layout, item_id)
        if item.state not in allowed:
            names = "/".join(sorted(s.value for s in allowed))
            raise WrongState(f"cannot {action} {item_id}: it is {item.state.value} (only {names} items)")
        result, event, details = change(item)
        if event is not None:
            _log_event(layout, event, item_id, **details)
    return result


def hold(layout: Layout, item_id: str) -> Item:
    return _change(layout, item_id, {ItemState.PENDING}, "hold",
                   lambda item: (_move(layout, item, ItemState.HELD), Event.HELD, {}))


def release(layout: Layout, item_id: str) -> Item:
    def change(item: Item):
        priority = item.priority or Priority.NORMAL
        return _move(layout, item, ItemState.PENDING, priority), Event.RELEASED, {"priority": priority.value}
    return _change(layout, item_id, {ItemState.HELD}, "release", change)


def move(layout: Layout, item_id: str, priority: Priority) -> Item:
    """Change an item's priority; a pending item moves to that queue (keeping its age)."""
    def change(item: Item):
        before = item.priority
        meta = dataclasses.replace(item.meta, priority=priority) if item.meta is not None else None
        if item.state is ItemState.PENDING:
            moved = _move_with_meta(layout, item, meta, ItemState.PENDING, priority)
        else:
            if meta is not None and meta != item.meta:
                _write_meta(layout, item, meta)
            moved = dataclasses.replace(item, priority=priority)
        details = {"from": before.value if before else None, "to": priority.value}
        return moved, Event.MOVED, details
    return _change(layout, item_id, {ItemState.PENDING, ItemState.HELD}, "move", change)


def retry(layout: Layout, item_id: str, facts: dict) -> Item:
    """Failed item back to its queue with attempts reset (errors are kept). ``facts``: the
    sha256, size and records of its data, freshly validated (``trainer.intake.enqueue.retry``)."""
    def change(item: Item):
        meta = item.meta
        if meta is None:  # metadata lost or corrupt: rebuilt from what the data says
            from trainer.spool.item import ItemMeta

            meta = ItemMeta(id=item.id, name="data.jsonl", source="recovered", enqueued_at=iso(utc_now()),
                            priority=item.priority or Priority.NORMAL, **facts)
        meta = dataclasses.replace(meta, attempts=0, not_before=None, **facts)
        return _move_with_meta(layout, item, meta, ItemState.PENDING, meta.priority), Event.RETRIED, {}
    return _change(layout, item_id, {ItemState.FAILED}, "retry", change)


def remove(layout: Layout, item_id: str) -> Item:
    """Delete an item and its queued copy of the data (never the active one)."""
    def change(item: Item):
        # Renamed into tmp/ first so a crash mid-delete leaves debris, not a half item.
        doomed = layout.tmp / f"{item.id}.removed"
        rename_durably(item.path, doomed)
        import shutil  # lazily: ~5 ms of every trainctl command's start-up

        shutil.rmtree(doomed, ignore_errors=True)
        return item, Event.REMOVED, {"state": item.state.value}
    allowed = {ItemState.PENDING, ItemState.HELD, ItemState.FAILED, ItemState.DONE}
    return _change(layout, item_id, allowed, "remove", change)


# --- the daemon's side ---------------------------------------------------------------------

RetryDue = Callable[[str, str], bool]  # (item id, its not_before as recorded) -> is the delay over?


def retry_over_by_wall_clock(item_id: str, not_before: str) -> bool:
    """The wall clock's answer, at this moment. The daemon does not use it: it asks its
    ``RetryClock``, which judges delays on the monotonic clock (a wall-clock jump back would
    hold a retry for as long as the jump)."""
    return parse_iso(not_before) <= utc_now()  # parse_meta checked the format


def claim_next(layout: Layout, retry_due: RetryDue = retry_over_by_wall_clock) -> Item | None:
    """Move the first eligible pending item to active/ (one rename) and return it.

    Eligible: highest priority first, oldest first, skipping items still waiting out a retry
    delay (their ``not_before``, as ``retry_due`` judges it). Raises ``WrongState`` if an item
    is already active (recover it first).
    """
    with spool_lock(layout):
        current = active_item(layout)
        if current is not None:
            raise WrongState(f"{current.id} is already active: requeue or finish it first")
        for priority in Priority.in_service_order():
            directory = layout.pending(priority)
            for item_id in _entries(directory):
                try:
                    item = load_item(directory / item_id, ItemState.PENDING, priority)
                except FileNotFoundError:
                    continue  # deleted by hand between the listing and now
                if item.meta is not None and item.meta.not_before is not None:
                    if not retry_due(item_id, item.meta.not_before):
                        continue
                try:
                    claimed = _move(layout, item, ItemState.ACTIVE, priority)
                except PermissionError as exc:
                    # An item directory someone else owns (moving a directory rewrites its
                    # "..", which needs write access to it): leave it where it is, untouched,
                    # say so once, and serve the rest of the queue.
                    if item_id not in _reported_unmovable:
                        import logging  # only here: trainctl imports this module and not logging

                        _reported_unmovable.add(item_id)
                        logging.getLogger("trainer.spool.queue").error(
                            "%s: cannot take it (%s): give it back to the daemon's user (chown -R), it is "
                            "left in the queue", directory / item_id, exc.strerror)
                    continue
                attempts = item.meta.attempts if item.meta else None
                _log_event(layout, Event.CLAIMED, item_id, priority=priority.value, attempts=attempts)
                return claimed
    return None


def complete(layout: Layout, item_id: str, **details: object) -> Item:
    return _change(layout, item_id, {ItemState.ACTIVE}, "complete",
                   lambda item: (_move(layout, item, ItemState.DONE), Event.DONE, details))


def fail(layout: Layout, item_id: str, message: str, *, kind: str = "permanent",
         event: Event = Event.FAILED) -> Item:
    """Active item to failed/, recording why (``kind`` 'skipped' for a skip request)."""
    def change(item: Item):
        meta = None
        if item.meta is not None:
            from trainer.spool.item import ItemError

            error = ItemError(at=iso(utc_now()), message=message, kind=kind, attempt=item.meta.attempts)
            meta = item.meta.with_error(error)
        return _move_with_meta(layout, item, meta, ItemState.FAILED), event, {"reason": message, "kind": kind}
    return _change(layout, item_id, {ItemState.ACTIVE}, "fail", change)


def requeue(layout: Layout, item_id: str, *, reason: str, not_before: datetime | None = None,
            count_attempt: bool = True) -> Item:
    """Active item back to its pending queue, keeping its cursor (it resumes mid-file).

    ``count_attempt``: an interrupted run costs an attempt; a graceful stop does not. A
    graceful stop with no delay leaves the metadata alone (a past ``not_before`` is harmless),
    so it needs no room on the disk: a daemon stopped while the disk is full still puts its
    item back without counting an attempt.
    """
    def change(item: Item):
        priority = item.priority or Priority.NORMAL
        meta = item.meta
        if meta is not None and (count_attempt or not_before is not None):
            if count_attempt:
                from trainer.spool.item import ItemError

                meta = meta.with_error(ItemError(at=iso(utc_now()), message=reason,
                                                 kind="transient", attempt=meta.attempts))
                meta = dataclasses.replace(meta, attempts=meta.attempts + 1)
            meta = dataclasses.replace(meta, not_before=iso(not_before) if not_before else None)
        details = {"reason": reason, "counted": count_attempt,
                   "not_before": iso(not_before) if not_before else None}
        return _move_with_meta(layout, item, meta, ItemState.PENDING, priority), Event.REQUEUED, details
    return _change(layout, item_id, {ItemState.ACTIVE}, "requeue", change)


def _annotate_active(layout: Layout, item_id: str, what: str, **fields: object) -> Item:
    """Replace some metadata fields of the active item (no state change, no event)."""
    def change(item: Item):
        if item.meta is None:
            raise WrongState(f"{item_id}: cannot record {what}: {item.meta_problem}")
        meta = dataclasses.replace(item.meta, **fields)
        _write_meta(layout, item, meta)
        return dataclasses.replace(item, meta=meta), None, {}
    return _change(layout, item_id, {ItemState.ACTIVE}, f"record {what} for", change)


def set_tokens(layout: Layout, item_id: str, tokens: dict) -> Item:
    """Record the active item's token statistics (from the engine's survey of it)."""
    return _annotate_active(layout, item_id, "token statistics", tokens=tokens)


def record_eval(layout: Layout, item_id: str, numbers: dict) -> Item:
    """Record the active item's held-out evaluation in its metadata, and an ``evaluated`` event."""
    item = _annotate_active(layout, item_id, "evaluation", eval=numbers)
    _log_event(layout, Event.EVALUATED, item_id, **numbers)
    return item


def claim_specific(layout: Layout, item_id: str) -> Item | None:
    """Claim this pending item (the one a checkpoint is in the middle of), or None if it is not
    pending (held, removed or failed meanwhile)."""
    with spool_lock(layout):
        try:
            item = find(layout, item_id)
        except NoSuchItem:
            return None
        if item.state is not ItemState.PENDING:
            return None
        if active_item(layout) is not None:
            raise WrongState(f"{active_item(layout).id} is already active: requeue or finish it first")
        claimed = _move(layout, item, ItemState.ACTIVE, item.priority)
        _log_event(layout, Event.CLAIMED, item_id, priority=item.priority.value if item.priority else None,
                      attempts=item.meta.attempts if item.meta else None)
        return claimed
