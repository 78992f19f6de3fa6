"""Intake: how files become new items, validated, hashed and copied in one pass.

A batch is staged whole in one locked ``tmp/BATCH/`` (one sub-directory per item) and only
published, one rename per item, once every file in it has passed: an invalid file means
nothing is queued. Each file's records are held to one format (reported in its metadata), and
what was queued before is looked up (trainer.intake.seen): a file with the same content as a
queued, active or done item is named (or, asked to, refused), and records seen in earlier
files are counted. Enqueueing needs no spool lock, and a crash leaves only staging debris
(copies; the user's files are only ever read), never a half item. Kept apart from
``trainer.spool.queue`` so that reading the queue (status, list) never imports the validator.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.config import SpoolConfig
from trainer.errors import InvalidData, NoSuchItem, WrongState
from trainer.ids import new_id
from trainer.intake.seen import Repeats, SeenIndex
from trainer.intake.validate import Report, validate_stream
from trainer.spool import events, queue
from trainer.spool.fsutil import (
    FILE_MODE,
    StagingDir,
    make_group_dir,
    naming,
    rename_durably,
    unlink_durably,
    write_atomic,
)
from trainer.eventkinds import Event
from trainer.spool.item import DATA_NAME, META_NAME, Item, ItemMeta, display_name
from trainer.spool.layout import Layout
from trainer.states import ItemState, Priority
from trainer.timefmt import iso, utc_now

_COPY_CHUNK = 1 << 20


def _open_regular_file(path: Path) -> tuple[int, os.stat_result]:
    """Open a file to read it; every way that can fail is one line naming the file."""
    shown = display_name(str(path))
    try:
        # Judged before it is opened: opening a device can act on it (a tape rewinds, a tty
        # becomes the controlling terminal). fstat below settles a swap in between.
        _refuse_unless_regular(os.stat(path).st_mode, shown)
        # O_NONBLOCK: opening a fifo must not wait for a writer; it is refused just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise InvalidData(f"{shown}: no such file") from None
    except PermissionError:
        raise InvalidData(f"{shown}: permission denied: make it readable (chmod u+r) and enqueue it again") from None
    except OSError as exc:
        raise InvalidData(f"{shown}: cannot open it: {exc.strerror}") from None
    st = os.fstat(fd)
    try:
        _refuse_unless_regular(st.st_mode, shown)
    except InvalidData:
        os.close(fd)
        raise
    return fd, st


def _refuse_unless_regular(mode: int, shown: str) -> None:
    if stat.S_ISDIR(mode):
        raise InvalidData(f"{shown}: is a directory: enqueue the .jsonl files inside it")
    if not stat.S_ISREG(mode):
        raise InvalidData(f"{shown}: not a regular file (fifo, device or socket): enqueue a regular .jsonl file")


def copy_validated(src_fd: int, dest: Path, limits: SpoolConfig, *, record_digests: bool = False) -> Report:
    """Copy ``src_fd`` to ``dest`` while validating and hashing it, in one streaming pass.

    What is validated is exactly what is queued, even if the source changes meanwhile.
    """
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(out, FILE_MODE)  # the daemon's group must read it, whatever our umask

        def sink(chunk: bytes) -> None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]

        def read(n: int) -> bytes:
            try:
                return os.read(src_fd, n)
            except OSError as exc:
                raise InvalidData(f"{dest.name}: read error: {exc.strerror}") from None

        with naming(dest):  # a full disk's error names the copy, not "the base dir"
            report = validate_stream(read, max_line_bytes=limits.max_line_bytes,
                                     max_file_bytes=limits.max_file_bytes, sink=sink, chunk_size=_COPY_CHUNK,
                                     record_digests=record_digests)
            os.fsync(out)
    finally:
        os.close(out)
    return report


def new_meta(item_id: str, name: str, source: str, report: Report, priority: Priority,
             repeats: Repeats | None = None) -> ItemMeta:
    return ItemMeta(
        id=item_id, name=display_name(name), source=source, sha256=report.sha256, size=report.size,
        records=report.records, enqueued_at=iso(utc_now()), priority=priority, formats=report.formats,
        repeated_records=repeats.earlier if repeats else None, repeated_in_file=repeats.within if repeats else None,
    )


DUPLICATE_STATES = (ItemState.PENDING, ItemState.HELD, ItemState.ACTIVE, ItemState.DONE)
"""An item with the same content in one of these states makes a new file a duplicate (a
failed or removed one does not: queueing the file again is how one tries again)."""


NAMED_DUPLICATES = 3
"""How many items with the same content a warning names (the newest): one is enough to act on,
and looking up the state of every earlier copy of a file queued thousands of times would make
each enqueue of it slower than the last."""


def same_content_items(layout: Layout, seen: SeenIndex, sha256: str, batch: dict[str, str]) -> list[tuple[str, str]]:
    """(id, state) of the newest items with this content that make a file a duplicate (at most
    NAMED_DUPLICATES); an item of the same batch, not queued yet, has the state "in this batch"."""
    found = []
    for item_id in reversed(seen.same_content(sha256)):
        if len(found) == NAMED_DUPLICATES:
            break
        if item_id in batch:
            found.append((item_id, "in this batch"))
            continue
        try:
            item = queue.find(layout, item_id)
        except NoSuchItem:
            continue  # removed since
        if item.state in DUPLICATE_STATES:
            found.append((item_id, item.state.value))
    return found


def duplicate_line(name: str, duplicates: list[tuple[str, str]]) -> str:
    """One line naming the items a file repeats."""
    items = ", ".join(f"{item_id} ({state})" for item_id, state in duplicates)
    return f"{display_name(name)}: the same content (sha256) as {items}"


@dataclass(frozen=True)
class Queued:
    meta: ItemMeta
    source: Path
    source_stat: os.stat_result  # as read, so --move deletes only that very file
    duplicates: tuple[tuple[str, str], ...] = ()  # (id, state) of items with the same content
    index_warning: str | None = None  # the batch is queued, but trainer.intake.seen could not note it


def _problems(path: Path, report: Report) -> list[str]:
    count = report.problem_count
    header = f"{display_name(str(path))}: invalid training data ({count} problem{'s' if count != 1 else ''})"
    return [header, *report.describe(display_name(str(path)))]


def enqueue_batch(
    layout: Layout,
    sources: list[Path],
    *,
    limits: SpoolConfig,
    priority: Priority = Priority.NORMAL,
    hold: bool = False,
    reject_duplicates: bool = False,
) -> list[Queued]:
    """Validate and copy every file, then queue them all, in order; if any is invalid (or, with
    ``reject_duplicates``, repeats a queued, active or done item) raise ``InvalidData``
    listing every problem, and queue none."""
    staged = _stage_files(layout, sources, limits)
    with staged.stage, SeenIndex(layout) as seen:
        batch: dict[str, str] = {}
        checked = []
        for item_id, src, st, report in staged.files:
            duplicates = same_content_items(layout, seen, report.sha256, batch)
            repeats = seen.repeats(report.digests)
            seen.remember_file(report.sha256, item_id)
            batch[item_id] = src.name
            checked.append((item_id, src, st, report, duplicates, repeats))
        if reject_duplicates and any(entry[4] for entry in checked):
            raise InvalidData("nothing was queued: --reject-duplicates refuses files already queued, active or done",
                              [duplicate_line(src.name, dupes) for _, src, _, _, dupes, _ in checked if dupes])
        # Every item's metadata first: a disk that fills up now fails the batch with nothing
        # queued.
        queued = []
        for item_id, src, st, report, duplicates, repeats in checked:
            meta = new_meta(item_id, src.name, "enqueue", report, priority, repeats)
            write_atomic(staged.stage.path / item_id, staged.stage.path / item_id / META_NAME, meta.to_json())
            queued.append(Queued(meta, src, st, tuple(duplicates)))
        # Then their event lines, in one write: refused, nothing is queued. Then the renames,
        # which need no room (a read-only remount in between is the one way to a line for an
        # item that did not arrive).
        events.append_first(layout, [(Event.ENQUEUED, e.meta.id, _enqueued_details(e, priority, hold))
                                     for e in queued])
        dest_dir = layout.state_dir(ItemState.HELD) if hold else layout.pending(priority)
        for entry in queued:
            rename_durably(staged.stage.path / entry.meta.id, dest_dir / entry.meta.id)
        try:
            seen.add()
        except OSError as exc:  # the items are queued: the index is only a statistic
            warning = (f"the index of queued files and records was not updated ({exc.strerror}): later "
                       f"files will not count these as seen")
            queued = [dataclasses.replace(entry, index_warning=warning) for entry in queued]
    return queued


def _enqueued_details(entry: Queued, priority: Priority, hold: bool) -> dict:
    meta = entry.meta
    details = {"name": meta.name, "priority": priority.value, "records": meta.records, "size": meta.size,
               "sha256": meta.sha256, "held": hold, "formats": list(meta.formats),
               "repeated_records": meta.repeated_records}
    if entry.duplicates:
        details["same_content_as"] = [item_id for item_id, _ in entry.duplicates]
    return details


@dataclass
class _Staged:
    stage: StagingDir
    files: list[tuple[str, Path, os.stat_result, Report]]


def _stage_files(layout: Layout, sources: list[Path], limits: SpoolConfig) -> _Staged:
    """Copy and validate every file into one locked staging dir; InvalidData (and nothing
    left behind) if any cannot be queued."""
    seen: dict[tuple[int, int], Path] = {}
    problems: list[str] = []
    staged: list[tuple[str, Path, os.stat_result, Report]] = []
    stage = StagingDir(layout.tmp, f"batch-{new_id()}")
    try:
        for src in sources:
            try:
                fd, st = _open_regular_file(src)
            except InvalidData as exc:
                problems.append(str(exc))
                continue
            try:
                if (st.st_dev, st.st_ino) in seen:
                    problems.append(f"{display_name(str(src))}: the same file as {seen[st.st_dev, st.st_ino]}, "
                                    f"given twice: give it once")
                    continue
                seen[st.st_dev, st.st_ino] = src
                item_id = new_id()
                make_group_dir(stage.path / item_id)
                report = copy_validated(fd, stage.path / item_id / DATA_NAME, limits, record_digests=True)
            finally:
                os.close(fd)
            if not report.ok:
                problems.extend(_problems(src, report))
            staged.append((item_id, src, st, report))
        if problems:
            noun = "problem" if len(problems) == 1 else f"{len(problems)} problems"
            raise InvalidData(f"nothing was queued: fix the {noun} below", problems)
    except BaseException:
        stage.close()
        raise
    return _Staged(stage, staged)


def enqueue(layout: Layout, src: Path, *, limits: SpoolConfig, priority: Priority = Priority.NORMAL,
            hold: bool = False) -> ItemMeta:
    """Validate and queue one file (see ``enqueue_batch``)."""
    return enqueue_batch(layout, [src], limits=limits, priority=priority, hold=hold)[0].meta


def delete_source(queued: Queued) -> str | None:
    """``--move``: delete the user's file now that it is queued, unless it was replaced or
    changed since it was read (then keep it and say why)."""
    try:
        now = os.stat(queued.source, follow_symlinks=False)
    except FileNotFoundError:
        return "it is already gone"
    before = queued.source_stat
    if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != (before.st_dev, before.st_ino, before.st_size,
                                                                     before.st_mtime_ns):
        return "it changed after it was read, so the queued copy is not this file"
    try:
        unlink_durably(queued.source)
    except OSError as exc:
        return exc.strerror
    return None


def validate_item_data(item: Item, limits: SpoolConfig, tick: Callable[[], None] = lambda: None) -> Report:
    """The queued copy's data validated again; ``tick`` is called before each read."""
    if os.path.islink(item.path):
        # O_NOFOLLOW below guards only the last component; the item dir itself must not be a
        # link to data outside the base dir (retry would then write meta.json there too).
        raise WrongState(f"{item.id}: {item.path} is a symlink, not an item directory: remove it")
    try:
        fd = os.open(item.data_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except PermissionError:
        raise InvalidData(f"{item.data_path}: permission denied: give it to the daemon's group and make it "
                          f"group-readable (chgrp trainer, chmod g+r), then retry") from None
    except OSError as exc:
        raise WrongState(f"{item.id}: its data cannot be opened ({exc.strerror}): remove it") from None
    try:
        return validate_stream(lambda n: (tick(), os.read(fd, n))[1], max_line_bytes=limits.max_line_bytes,
                               max_file_bytes=limits.max_file_bytes)
    finally:
        os.close(fd)


def retry(layout: Layout, item_id: str, limits: SpoolConfig) -> Item:
    """Send a failed item back to its queue, attempts reset, after validating its data again
    (it may have been fixed, or made readable, in place); still invalid: nothing changes."""
    item = queue.find(layout, item_id)
    if item.state is not ItemState.FAILED:
        raise WrongState(f"cannot retry {item_id}: it is {item.state.value} (only failed items)")
    report = validate_item_data(item, limits)  # outside the spool lock: it may take a while
    if not report.ok:
        raise InvalidData(f"{item_id}: its data is still invalid, so it stays failed: fix "
                          f"{item.data_path} and retry", _problems(item.data_path, report)[1:])
    return queue.retry(layout, item_id, {"sha256": report.sha256, "size": report.size, "records": report.records})


def retry_all_failed(layout: Layout, limits: SpoolConfig) -> tuple[list[str], list[str]]:
    """Retry every failed item; returns (retried ids, one line per item left failed)."""
    retried, left = [], []
    for item in queue.list_items(layout, [ItemState.FAILED]):
        try:
            retry(layout, item.id, limits)
            retried.append(item.id)
        except InvalidData as exc:
            left.append(str(exc))
        except WrongState:
            continue  # someone else moved it meanwhile
    return retried, left
