"""Intake: how a file becomes a new item, validated, hashed and copied in one pass.

The item is staged in a locked ``tmp/ID/`` and appears in its queue with one rename, so
enqueueing needs no spool lock and a crash leaves only staging debris, never a half item.
Kept apart from ``trainer.spool`` so that reading the queue (status, list) never pays for
importing the validator.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from trainer import events
from trainer.config import SpoolConfig
from trainer.errors import InvalidData, WrongState
from trainer.fsutil import StagingDir, write_atomic
from trainer.ids import new_id
from trainer.item import DATA_NAME, META_NAME, Item, ItemMeta
from trainer.layout import Layout
from trainer.states import Event, ItemState, Priority
from trainer.timefmt import iso, utc_now
from trainer.validate import Report, validate_stream

_COPY_CHUNK = 1 << 20

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

def check_file(src: Path, limits: SpoolConfig) -> Report:
    """Validate ``src`` without queueing it (a batch is checked whole before any is queued)."""
    fd = _open_regular_file(src)
    try:
        return validate_stream(lambda n: os.read(fd, n), max_line_bytes=limits.max_line_bytes,
                               max_file_bytes=limits.max_file_bytes, chunk_size=_COPY_CHUNK)
    finally:
        os.close(fd)
