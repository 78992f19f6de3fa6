"""What was queued before: the files (by sha256) and the records (by digest) of every item.

    BASE/index/files/XX      one "SHA256 ID" line per queued file, in 256 buckets by the
                             first two digits of the sha256
    BASE/index/records/XX    the digests of the records ever queued (16 hex digits a line),
                             in 256 buckets by their first two digits
    BASE/index/lock          held while a batch looks up and then adds its own

A record's digest is the start of the sha256 of its line (trainer.intake.validate takes it
in the validation pass). Enqueue and the inbox ask, per file: which queued items have the same
content, and how many of its records were in a file queued earlier (counting the files
earlier in the same batch) or repeat within it; then, once the items are queued, add theirs.

Cost: a lookup reads only the buckets its file and records fall in (a small file, a few
small ones: 1/256 of the index each), and an addition is one append per bucket touched, so enqueue pays per record, not per item
ever queued; a big file touches every bucket, so it reads the whole index once. Lines are
appended whole or not at all (`fsutil.append_to`), and not fsynced: a crash or power cut can
lose the newest additions, which only makes a later count miss those repeats; the index is
a statistic, never what decides whether an item trains. Removed items stay in it (their
records were seen). Torch-free.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from trainer.spool.fsutil import append_to, exclusive_lock, make_group_dir
from trainer.spool.layout import Layout

INDEX_MODE = 0o660  # trainctl users and the daemon all append: group-writable
_DIGEST_HEX = 16


@dataclass(frozen=True)
class Repeats:
    """How many of a file's records were seen before."""

    earlier: int
    """Records whose line was already in a file queued earlier."""
    within: int
    """Records that repeat an earlier line of the same file (one not seen in earlier files)."""


class SeenIndex:
    """The index under its lock, for one batch: look up each file, then ``add`` what was queued.

    Use as a context manager; the lock is held until it exits (enqueues then take turns for
    the few milliseconds of their lookups and additions, so two batches never both miss
    each other's repeats).
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._buckets: dict[str, set[str]] = {}
        self._files: dict[str, dict[str, list[str]]] = {}  # by prefix: sha256 -> ids
        self._new_records: dict[str, list[str]] = {}
        self._new_files: dict[str, list[str]] = {}
        self._lock = None

    def __enter__(self) -> "SeenIndex":
        _make_index_dirs(self.layout)
        self._lock = exclusive_lock(self.layout.index_lock)
        self._lock.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lock.__exit__(*exc_info)

    def same_content(self, sha256: str) -> list[str]:
        """Ids of the items queued before with this file's sha256 (this batch's included), oldest first."""
        return list(self._file_bucket(sha256[:2]).get(sha256, ()))

    def _file_bucket(self, prefix: str) -> dict[str, list[str]]:
        if prefix not in self._files:
            files: dict[str, list[str]] = {}
            for line in _read(self.layout.file_index(prefix)).splitlines():
                parts = line.split()
                if len(parts) == 2:
                    files.setdefault(parts[0], []).append(parts[1])
            self._files[prefix] = files
        return self._files[prefix]

    def repeats(self, digests: bytes | None) -> Repeats | None:
        """How many of a file's records (its digests, 8 bytes each) were seen before; they then
        count as seen for the next file of the batch. None when no digests were taken."""
        if digests is None:
            return None
        text = digests.hex()
        lines = [text[i:i + _DIGEST_HEX] for i in range(0, len(text), _DIGEST_HEX)]
        earlier = within = 0
        for digest, count in Counter(lines).items():
            bucket = self._bucket(digest[:2])
            if digest in bucket:
                earlier += count  # every copy repeats the earlier file's
            else:
                within += count - 1
                bucket.add(digest)
                self._new_records.setdefault(digest[:2], []).append(digest)
        return Repeats(earlier=earlier, within=within)

    def remember_file(self, sha256: str, item_id: str) -> None:
        self._file_bucket(sha256[:2]).setdefault(sha256, []).append(item_id)
        self._new_files.setdefault(sha256[:2], []).append(f"{sha256} {item_id}\n")

    def add(self) -> None:
        """Append what this batch remembered: once its items are queued (a batch that fails
        adds nothing)."""
        for prefix, digests in self._new_records.items():
            _append(self.layout.record_index(prefix), "".join(f"{d}\n" for d in digests).encode())
        for prefix, lines in self._new_files.items():
            _append(self.layout.file_index(prefix), "".join(lines).encode())
        self._new_records, self._new_files = {}, {}

    def _bucket(self, prefix: str) -> set[str]:
        if prefix not in self._buckets:
            self._buckets[prefix] = set(_read(self.layout.record_index(prefix)).split())
        return self._buckets[prefix]


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            return file.read().decode("ascii", "replace")
    except FileNotFoundError:
        return ""


def _append(path: Path, data: bytes) -> None:
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW  # read: append_to looks at the last byte
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, INDEX_MODE)
            os.fchmod(fd, INDEX_MODE)  # the group's mode, whatever this writer's umask
        except FileExistsError:
            fd = os.open(path, flags)
    try:
        append_to(fd, data, path)
    finally:
        os.close(fd)


def _make_index_dirs(layout: Layout) -> None:
    # Made on first use, so a base dir from before the index needs no upgrade.
    for path in (layout.index_dir, layout.index_dir / "files", layout.index_dir / "records"):
        try:
            make_group_dir(path)
        except FileExistsError:
            pass
