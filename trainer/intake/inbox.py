"""The inbox: a drop zone for cp/scp, and how a complete file in it becomes an item.

Only regular files are considered; dotfiles, ``*.tmp`` and ``*.part`` are names writers use
while a copy is in progress, so they are never touched (hence: copy to ``inbox/.name``, then
``mv`` it to ``inbox/name``). Nothing in the inbox is ever followed or opened before it has
been renamed into our own staging directory, so a symlink, fifo or device is left alone.

A file is taken once complete: it arrived by rename (the daemon's inotify watch says so),
or its size and mtime have not changed for the settle period, measured on the monotonic clock.
The wall clock (and so a file's mtime) can jump: forward, and every copy in progress looks
old; back, and a finished file looks written in the future. It is read once per file, for
the files already there when the daemon starts (see ``first_sight_credit``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from trainer.config import SpoolConfig
from trainer.eventkinds import Event
from trainer.ids import new_id
from trainer.intake.enqueue import duplicate_line, new_meta, same_content_items
from trainer.intake.seen import SeenIndex
from trainer.intake.validate import Problem, Report, validate_stream
from trainer.spool import events
from trainer.spool.fsutil import StagingDir, rename_durably, unlink_durably, write_atomic
from trainer.spool.item import DATA_NAME, META_NAME, ItemError, display_name
from trainer.spool.layout import Layout, is_candidate_name
from trainer.spool.origin import ORIGIN_NAME, origin_record, restore_to_inbox
from trainer.states import ItemState, Priority

MAX_REREADS = 3  # a file still growing after this many reads is rejected, not looped on

log = logging.getLogger("trainer.intake.inbox")



@dataclass(frozen=True)
class Observation:
    """What a scan saw of an inbox file, and since when (monotonic) it has looked so."""

    size: int
    mtime_ns: int
    inode: int
    unchanged_since: float

    def same_file_state(self, other: "Observation") -> bool:
        return (self.size, self.mtime_ns, self.inode) == (other.size, other.mtime_ns, other.inode)


def first_sight_credit(mtime_ns: int, now_wall: float, settle_s: float) -> float:
    """Seconds a file found at the daemon's start already counts as unchanged: its mtime's age,
    at most ``settle_s``, and 0 for an mtime in the future (the clock jumped back since).

    Read once, at that first scan, and then carried on the monotonic clock: re-reading the
    wall clock at later scans would make every copy in progress look old after a forward jump.
    """
    age = now_wall - mtime_ns / 1e9
    return min(max(age, 0.0), settle_s)


def is_settled(seen: Observation, now_mono: float, settle_s: float) -> bool:
    """A file is complete once unchanged for ``settle_s`` on the monotonic clock."""
    return now_mono - seen.unchanged_since >= settle_s


class InboxScanner:
    """Remembers what each inbox file looked like, to tell finished copies from ongoing ones."""

    def __init__(self, inbox: Path, settle_s: float) -> None:
        self.inbox = inbox
        self.settle_s = settle_s
        self._seen: dict[str, Observation] = {}
        self._refused: dict[str, tuple[int, int]] = {}  # name -> (type, inode), logged once
        # Only the first scan may credit a file with its mtime's age: those files were there
        # when the daemon started (a file that sat there while it was down need not wait
        # again). Any file that appears or changes later is timed from when it was seen so.
        self._first_scan = True

    def ready(self, now_wall: float, now_mono: float, renamed: frozenset[str] = frozenset()) -> list[str]:
        """Names of complete files, oldest mtime first; ``renamed``: names known to have
        arrived by rename (from inotify's IN_MOVED_TO), taken at once. ``now_wall`` is read
        only at the first scan."""
        current: dict[str, Observation] = {}
        refused: dict[str, tuple[int, int]] = {}
        with os.scandir(self.inbox) as entries:
            for entry in entries:
                if not is_candidate_name(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    # Symlinks, fifos, devices, directories: never followed or opened, and left
                    # where they are. Said once (not on every scan), so the person who dropped
                    # it can find out why it sits there untaken.
                    refused[entry.name] = (stat.S_IFMT(st.st_mode), st.st_ino)
                    if self._refused.get(entry.name) != refused[entry.name]:
                        log.warning("inbox: not taking %s: %s; only regular files are taken (copy the "
                                    "file itself into the inbox)", display_name(entry.name),
                                    _kind(st.st_mode))
                    continue
                current[entry.name] = self._observe(entry.name, st, now_wall, now_mono)
        self._seen = current
        self._refused = refused
        self._first_scan = False
        ready = [
            name for name, seen in current.items()
            if name in renamed or is_settled(seen, now_mono, self.settle_s)
        ]
        return sorted(ready, key=lambda name: (current[name].mtime_ns, name))

    def _observe(self, name: str, st: os.stat_result, now_wall: float, now_mono: float) -> Observation:
        """This scan's observation of a file: unchanged since the earlier one, or new from now."""
        seen = Observation(st.st_size, st.st_mtime_ns, st.st_ino, now_mono)
        before = self._seen.get(name)
        if before is not None and before.same_file_state(seen):
            return before
        if before is None and self._first_scan:
            credit = first_sight_credit(st.st_mtime_ns, now_wall, self.settle_s)
            return Observation(st.st_size, st.st_mtime_ns, st.st_ino, now_mono - credit)
        return seen


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink (never followed)"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device node"


@dataclass(frozen=True)
class Ingested:
    item_id: str
    state: ItemState  # PENDING when valid, FAILED (kept, with the reasons) when not
    name: str
    problems: tuple[str, ...] = ()


def _validate_staged(path: Path, limits: SpoolConfig) -> Report:
    """Validate the staged file; re-read it if it grew meanwhile (a writer still appending)."""
    for _ in range(MAX_REREADS):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except PermissionError:
            return _single_problem("cannot read the file (permission denied): make it readable "
                                   "by the trainer group (chmod g+r), then trainctl retry ID")
        try:
            report = validate_stream(lambda n: os.read(fd, n), max_line_bytes=limits.max_line_bytes,
                                     max_file_bytes=limits.max_file_bytes, record_digests=True)
            if os.fstat(fd).st_size == report.size or report.size > limits.max_file_bytes:
                return report
        finally:
            os.close(fd)
    return _single_problem("the file kept changing while it was read: finish writing it "
                           "elsewhere (or as inbox/.name), then mv it into the inbox")


def _single_problem(reason: str) -> Report:
    return Report(records=0, size=0, sha256="", problems=(Problem(0, reason),), problem_count=1)


def _note_seen(seen: SeenIndex, sha256: str, item_id: str) -> None:
    """Add the queued file to the index; a failure only costs later counts, so it is logged."""
    seen.remember_file(sha256, item_id)
    try:
        seen.add()
    except OSError as exc:
        log.warning("inbox: the index of queued files and records was not updated for %s: %s", item_id, exc)


def ingest(layout: Layout, name: str, limits: SpoolConfig, priority: Priority = Priority.NORMAL) -> Ingested | None:
    """Take ``inbox/name`` into the queue; ``None`` if it vanished or is not a regular file.

    The file is renamed (not copied) into a locked staging dir that records where it came
    from. If anything fails before the item is published (a full disk, an I/O error, a
    signal), the file goes straight back to the inbox; after a crash the recovery sweep puts
    it back. An invalid file is kept as a failed item with its problems, never dropped.
    """
    item_id = new_id()
    with StagingDir(layout.tmp, item_id) as stage:
        write_atomic(stage.path, stage.path / ORIGIN_NAME, origin_record(name))
        staged = stage.path / DATA_NAME
        try:
            rename_durably(layout.inbox / name, staged)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            if not stat.S_ISREG(os.lstat(staged).st_mode):
                # Swapped for something else between scan and rename: not ours to open.
                restore_to_inbox(layout, staged, name)
                return None
            report = _validate_staged(staged, limits)
            state = ItemState.PENDING if report.ok else ItemState.FAILED
            # What was queued before is looked up for a valid file only: a duplicate is said in
            # the log and the event, never refused (nobody is there to choose otherwise).
            with SeenIndex(layout) if report.ok else contextlib.nullcontext() as seen:
                duplicates = same_content_items(layout, seen, report.sha256, {}) if seen else []
                repeats = seen.repeats(report.digests) if seen else None
                meta = new_meta(item_id, name, "inbox", report, priority, repeats)
                problems = tuple(report.describe(display_name(name)))
                if not report.ok:
                    meta = meta.with_error(ItemError(at=meta.enqueued_at, kind="invalid",
                                                     message="; ".join(problems[:3])))
                write_atomic(stage.path, stage.path / META_NAME, meta.to_json())
                dest = layout.state_dir(state, priority if report.ok else None) / item_id
                stage.publish(dest)
                if seen:
                    _note_seen(seen, report.sha256, item_id)
        except BaseException:
            if os.path.lexists(staged):
                try:
                    restore_to_inbox(layout, staged, name)
                except OSError:
                    stage.keep()  # cannot put it back now: the recovery sweep will
            raise
    if report.ok:
        extra = {"same_content_as": [i for i, _ in duplicates]} if duplicates else {}
        events.append(layout, Event.ENQUEUED, item_id, name=meta.name, source="inbox",
                      priority=priority.value, records=meta.records, size=meta.size, sha256=meta.sha256,
                      formats=list(meta.formats), repeated_records=meta.repeated_records, **extra)
        if duplicates:
            log.warning("inbox: %s: queued as %s anyway", duplicate_line(name, duplicates), item_id)
    else:
        events.append(layout, Event.REJECTED, item_id, name=meta.name, source="inbox",
                      reason=meta.errors[-1].message, problems=report.problem_count)
    # After the event: the item is queued whatever happens to this leftover (a read-only disk
    # refusing its removal leaves a harmless origin.json in the item).
    unlink_durably(dest / ORIGIN_NAME)
    return Ingested(item_id, state, meta.name, problems)
