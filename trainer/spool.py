"""The spool: a queue of items as directories, moved between states by atomic renames.

Functions over a ``Layout``, no classes with state. Enqueueing stages a new item in
``tmp/`` and publishes it with one rename, so it needs no lock. Every change to an existing
item (claim, hold, retry, ...) runs under the spool lock, a brief exclusive flock, so
concurrent trainctl processes and the daemon never lose an update or an item. Readers
(status, list) take no lock: every state they can see is a complete one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from trainer import events
from trainer.config import SpoolConfig
from trainer.errors import InvalidData, NoSuchItem, WrongState
from trainer.fsutil import StagingDir, exclusive_lock, rename_durably, write_atomic
from trainer.ids import check_id, is_id, new_id
from trainer.item import DATA_NAME, META_NAME, Item, ItemError, ItemMeta, load_item
from trainer.layout import Layout
from trainer.states import Event, ItemState, Priority
from trainer.timefmt import iso, parse_iso, utc_now
from trainer.validate import Report, validate_stream

_COPY_CHUNK = 1 << 20


# --- reading -------------------------------------------------------------------------------

def _entries(directory: Path) -> list[str]:
    """Item ids in ``directory``, sorted (= queue order); foreign names are ignored."""
    try:
        return sorted(name for name in os.listdir(directory) if is_id(name))
    except FileNotFoundError:
        return []


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


def counts(layout: Layout) -> dict[str, int]:
    """How many items each state holds (pending split by priority): one listdir each."""
    result = {f"pending.{p.value}": len(_entries(layout.pending(p))) for p in Priority}
    result["pending"] = sum(result[f"pending.{p.value}"] for p in Priority)
    for state in (ItemState.ACTIVE, ItemState.HELD, ItemState.FAILED, ItemState.DONE):
        result[state.value] = len(_entries(layout.state_dir(state)))
    return result


def active_item(layout: Layout) -> Item | None:
    ids = _entries(layout.state_dir(ItemState.ACTIVE))
    if not ids:
        return None
    try:
        return load_item(layout.state_dir(ItemState.ACTIVE) / ids[0], ItemState.ACTIVE, None)
    except FileNotFoundError:
        return None


# --- enqueueing ----------------------------------------------------------------------------

def _open_regular_file(path: Path) -> int:
    # O_NONBLOCK: opening a fifo must not wait for a writer; it is refused just below.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InvalidData(f"{path}: no such file") from None
    except PermissionError:
        raise InvalidData(f"{path}: permission denied: make it readable (chmod u+r) and enqueue it again") from None
    except IsADirectoryError:
        raise InvalidData(f"{path}: is a directory: enqueue the .jsonl files inside it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidData(f"{path}: not a regular file (fifo, device or socket): enqueue a regular .jsonl file")
    return fd


def copy_validated(src_fd: int, dest: Path, limits: SpoolConfig) -> Report:
    """Copy ``src_fd`` to ``dest`` while validating and hashing it, in one streaming pass.

    What is validated is exactly what is queued, even if the source changes meanwhile.
    """
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    try:
        def sink(chunk: bytes) -> None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]

        report = validate_stream(
            lambda n: os.read(src_fd, n),
            max_line_bytes=limits.max_line_bytes,
            max_file_bytes=limits.max_file_bytes,
            sink=sink,
            chunk_size=_COPY_CHUNK,
        )
        os.fsync(out)
    finally:
        os.close(out)
    return report


def _new_meta(item_id: str, name: str, source: str, report: Report, priority: Priority) -> ItemMeta:
    return ItemMeta(
        id=item_id, name=name, source=source, sha256=report.sha256, size=report.size,
        records=report.records, enqueued_at=iso(utc_now()), priority=priority,
    )


def enqueue(
    layout: Layout,
    src: Path,
    *,
    limits: SpoolConfig,
    priority: Priority = Priority.NORMAL,
    hold: bool = False,
) -> ItemMeta:
    """Validate and copy ``src`` into the queue; raise ``InvalidData`` and add nothing if bad.

    The user's file is only read. The new item appears with one rename, complete.
    """
    fd = _open_regular_file(src)
    try:
        item_id = new_id()
        with StagingDir(layout.tmp, item_id) as stage:
            report = copy_validated(fd, stage.path / DATA_NAME, limits)
            if not report.ok:
                raise InvalidData(
                    f"{src}: invalid training data, nothing was queued "
                    f"({report.problem_count} problem{'s' if report.problem_count != 1 else ''})",
                    report.describe(str(src)),
                )
            meta = _new_meta(item_id, src.name, "enqueue", report, priority)
            write_atomic(stage.path, stage.path / META_NAME, meta.to_json())
            dest = layout.state_dir(ItemState.HELD) if hold else layout.pending(priority)
            stage.publish(dest / item_id)
    finally:
        os.close(fd)
    events.append(
        layout, Event.ENQUEUED, item_id, name=meta.name, priority=priority.value,
        records=meta.records, size=meta.size, sha256=meta.sha256, held=hold,
    )
    return meta


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
            events.append(layout, event, item_id, **details)
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
        if item.meta is not None and item.meta.priority is not priority:
            _write_meta(layout, item, dataclasses.replace(item.meta, priority=priority))
        if item.state is ItemState.PENDING:
            moved = _move(layout, item, ItemState.PENDING, priority)
        else:
            moved = dataclasses.replace(item, priority=priority)
        details = {"from": before.value if before else None, "to": priority.value}
        return moved, Event.MOVED, details
    return _change(layout, item_id, {ItemState.PENDING, ItemState.HELD}, "move", change)


def retry(layout: Layout, item_id: str, limits: SpoolConfig) -> Item:
    """Send a failed item back to its queue with its attempts reset (errors are kept)."""
    def change(item: Item):
        meta = item.meta or rebuild_meta(item, limits)
        meta = dataclasses.replace(meta, attempts=0, not_before=None)
        _write_meta(layout, item, meta)
        return _move(layout, item, ItemState.PENDING, meta.priority), Event.RETRIED, {}
    return _change(layout, item_id, {ItemState.FAILED}, "retry", change)


def retry_all_failed(layout: Layout, limits: SpoolConfig) -> list[str]:
    retried = []
    for item in list_items(layout, [ItemState.FAILED]):
        try:
            retry(layout, item.id, limits)
        except (NoSuchItem, WrongState):
            continue  # someone else moved it meanwhile
        retried.append(item.id)
    return retried


def remove(layout: Layout, item_id: str) -> Item:
    """Delete an item and its queued copy of the data (never the active one)."""
    def change(item: Item):
        # Renamed into tmp/ first so a crash mid-delete leaves debris, not a half item.
        doomed = layout.tmp / f"{item.id}.removed"
        rename_durably(item.path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        return item, Event.REMOVED, {"state": item.state.value}
    allowed = {ItemState.PENDING, ItemState.HELD, ItemState.FAILED, ItemState.DONE}
    return _change(layout, item_id, allowed, "remove", change)


def rebuild_meta(item: Item, limits: SpoolConfig) -> ItemMeta:
    """Recreate lost or corrupt metadata from the data file itself."""
    try:
        fd = os.open(item.data_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise WrongState(f"{item.id}: metadata and data both unreadable ({exc.strerror}): remove it") from None
    try:
        report = validate_stream(lambda n: os.read(fd, n), max_line_bytes=limits.max_line_bytes,
                                 max_file_bytes=limits.max_file_bytes)
    finally:
        os.close(fd)
    return _new_meta(item.id, DATA_NAME, "recovered", report, item.priority or Priority.NORMAL)


# --- the daemon's side ---------------------------------------------------------------------

def claim_next(layout: Layout, now: datetime) -> Item | None:
    """Move the first eligible pending item to active/ (one rename) and return it.

    Eligible: highest priority first, oldest first, skipping items whose retry delay has not
    passed. Raises ``WrongState`` if an item is already active (recover it first).
    """
    with spool_lock(layout):
        current = active_item(layout)
        if current is not None:
            raise WrongState(f"{current.id} is already active: requeue or finish it first")
        for priority in Priority.in_service_order():
            directory = layout.pending(priority)
            for item_id in _entries(directory):
                item = load_item(directory / item_id, ItemState.PENDING, priority)
                if item.meta is not None and item.meta.not_before is not None:
                    if parse_iso(item.meta.not_before) > now:
                        continue
                claimed = _move(layout, item, ItemState.ACTIVE, priority)
                attempts = item.meta.attempts if item.meta else None
                events.append(layout, Event.CLAIMED, item_id, priority=priority.value, attempts=attempts)
                return claimed
    return None


def complete(layout: Layout, item_id: str, **details: object) -> Item:
    return _change(layout, item_id, {ItemState.ACTIVE}, "complete",
                   lambda item: (_move(layout, item, ItemState.DONE), Event.DONE, details))


def fail(layout: Layout, item_id: str, message: str, *, kind: str = "permanent",
         event: Event = Event.FAILED) -> Item:
    """Active item to failed/, recording why (``kind`` 'skipped' for a skip request)."""
    def change(item: Item):
        if item.meta is not None:
            error = ItemError(at=iso(utc_now()), message=message, kind=kind, attempt=item.meta.attempts)
            _write_meta(layout, item, item.meta.with_error(error))
        return _move(layout, item, ItemState.FAILED), event, {"reason": message, "kind": kind}
    return _change(layout, item_id, {ItemState.ACTIVE}, "fail", change)


def requeue(layout: Layout, item_id: str, *, reason: str, not_before: datetime | None = None,
            count_attempt: bool = True) -> Item:
    """Active item back to its pending queue, keeping its cursor (it resumes mid-file).

    ``count_attempt``: an interrupted run costs an attempt; a graceful stop does not.
    """
    def change(item: Item):
        priority = item.priority or Priority.NORMAL
        if item.meta is not None:
            meta = item.meta
            if count_attempt:
                meta = meta.with_error(ItemError(at=iso(utc_now()), message=reason,
                                                 kind="transient", attempt=meta.attempts))
                meta = dataclasses.replace(meta, attempts=meta.attempts + 1)
            meta = dataclasses.replace(meta, not_before=iso(not_before) if not_before else None)
            _write_meta(layout, item, meta)
        details = {"reason": reason, "counted": count_attempt,
                   "not_before": iso(not_before) if not_before else None}
        return _move(layout, item, ItemState.PENDING, priority), Event.REQUEUED, details
    return _change(layout, item_id, {ItemState.ACTIVE}, "requeue", change)


def set_cursor(layout: Layout, item_id: str, cursor: dict) -> Item:
    """Record where training stands in the active item (the engine decides the content)."""
    def change(item: Item):
        if item.meta is None:
            raise WrongState(f"{item_id}: cannot record a cursor: {item.meta_problem}")
        meta = dataclasses.replace(item.meta, cursor=cursor)
        _write_meta(layout, item, meta)
        return dataclasses.replace(item, meta=meta), None, {}
    return _change(layout, item_id, {ItemState.ACTIVE}, "record a cursor for", change)


def check_file(src: Path, limits: SpoolConfig) -> Report:
    """Validate ``src`` without queueing it (a batch is checked whole before any is queued)."""
    fd = _open_regular_file(src)
    try:
        return validate_stream(lambda n: os.read(fd, n), max_line_bytes=limits.max_line_bytes,
                               max_file_bytes=limits.max_file_bytes, chunk_size=_COPY_CHUNK)
    finally:
        os.close(fd)
