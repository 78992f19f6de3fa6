"""The checkpoint store: immutable, verified checkpoints that a crash can never half-write.

    checkpoints/
      step-000000001200-3f9a1c/   one checkpoint: weights, optimizer, rng, train_state.json,
                                  and manifest.json, written last, with every file's size and sha256
      LATEST                      names the newest committed checkpoint (atomically replaced)
      quarantine/                 checkpoints that failed verification, with the reason beside them
      .staging-*/                 a save in progress (removed if it fails; swept after a crash)
      .deleting-*/                a checkpoint retention is removing (swept after a crash)

A checkpoint exists only once its manifest does and it has been renamed into place.
Checkpoints are ordered by the line, step and serial recorded in their manifests, never by
name or mtime (a rollback starts a new line from an earlier step: its first checkpoint is the
newest although its step is lower). This module never imports torch: the engine hands it a function that writes files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from trainer.errors import CorruptCheckpoint
from trainer.spool.fsutil import DELETING_PREFIX, disk_refusal, fsync_dir, remove_dirs, write_atomic
from trainer.timefmt import iso, utc_now

log = logging.getLogger("trainer.checkpoint")

MANIFEST = "manifest.json"
LATEST = "LATEST"
QUARANTINE = "quarantine"
STAGING_PREFIX = ".staging-"
MANIFEST_SCHEMA = 1
_HASH_CHUNK = 1 << 22


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    serial: int  # save order, breaking ties between checkpoints of the same step
    manifest: dict
    line: int = 0  # the training line (a rollback starts the next): ordered first

    @property
    def order(self) -> tuple[int, int, int]:
        return (self.line, self.step, self.serial)


def read_manifest(path: Path) -> dict:
    try:
        manifest = orjson.loads((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise CorruptCheckpoint("no manifest (the save never completed)") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CorruptCheckpoint(f"unreadable manifest ({exc})") from None
    if (not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA
            or not isinstance(manifest.get("step"), int) or not isinstance(manifest.get("files"), dict)):
        raise CorruptCheckpoint("manifest is not a checkpoint manifest")
    return manifest


def verify(path: Path) -> Checkpoint:
    """Check every file against the manifest (presence, size, sha256); raise CorruptCheckpoint."""
    manifest = read_manifest(path)
    for name, expected in manifest["files"].items():
        file = path / name
        if "/" in name or name in (".", ".."):
            raise CorruptCheckpoint(f"manifest names a path outside the checkpoint: {name!r}")
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{name} is missing") from None
        if size != expected.get("size"):
            raise CorruptCheckpoint(f"{name} has {size} bytes, the manifest says {expected.get('size')}")
        if file_digest(file) != expected.get("sha256"):
            raise CorruptCheckpoint(f"{name} does not match its sha256 (corrupted on disk)")
    return _checkpoint(path, manifest)


def _checkpoint(path: Path, manifest: dict) -> Checkpoint:
    return Checkpoint(path, manifest["step"], int(manifest.get("serial", 0)), manifest, int(manifest.get("line", 0)))


class CheckpointStore:
    def __init__(self, root: Path, *, keep_last: int = 3) -> None:
        self.root = root
        self.keep_last = max(2, keep_last)  # never fewer than the latest two
        self._leftovers: list[Path] = []  # staging dirs a read-only disk would not let a failed save remove
        root.mkdir(parents=True, exist_ok=True)

    # --- listing -------------------------------------------------------------------------

    def _candidates(self) -> list[Path]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return [self.root / n for n in names if n.startswith("step-") and (self.root / n).is_dir()]

    def committed(self) -> list[Checkpoint]:
        """Checkpoints whose manifest reads, oldest first by recorded step (not verified)."""
        found = []
        for path in self._candidates():
            try:
                manifest = read_manifest(path)
            except CorruptCheckpoint:
                continue
            found.append(_checkpoint(path, manifest))
        return sorted(found, key=lambda c: c.order)

    def latest_valid(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; broken ones are moved to quarantine/."""
        for path in self._candidates():
            try:
                read_manifest(path)
            except CorruptCheckpoint as exc:
                self.quarantine(path, str(exc))
        for checkpoint in reversed(self.committed()):
            try:
                return verify(checkpoint.path)
            except CorruptCheckpoint as exc:
                self.quarantine(checkpoint.path, str(exc))
        return None

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move a broken checkpoint aside (never delete: it may hold what a person needs)."""
        qdir = self.root / QUARANTINE
        qdir.mkdir(exist_ok=True)
        dest = qdir / path.name
        n = 0
        while dest.exists():
            n += 1
            dest = qdir / f"{path.name}.{n}"
        os.rename(path, dest)
        try:
            (qdir / f"{dest.name}.reason").write_text(f"{iso(utc_now())} {reason}\n")
        except OSError as exc:  # a full disk: the reason is in the log below all the same
            if disk_refusal(exc) is None:
                raise
        fsync_dir(self.root)
        log.warning("checkpoint %s is unusable (%s): moved to %s", path.name, reason, dest)
        return dest

    # --- saving --------------------------------------------------------------------------

    def save(self, step: int, write: Callable[[Path], None], info: dict, *, room_needed: int = 0) -> Checkpoint:
        """Write a checkpoint: ``write(dir)`` puts the files in a staging dir; then every file
        is fsynced and hashed into the manifest, the dir is renamed into place, the parent is
        fsynced and LATEST is replaced. On any error the staging dir is removed and the
        previous checkpoints are untouched.

        A disk that refuses the save (full, over quota, read-only) raises ``DiskUnwritable``,
        whatever library wrapped the OS error: ``room_needed`` (the expected size) lets the
        free space left decide when the errno was lost on the way. Once the checkpoint is
        committed, replacing LATEST and pruning old checkpoints are tidying: a disk that
        refuses those does not undo the save (LATEST is only a pointer for people; the newest
        checkpoint is found by its manifest).
        """
        self._remove_leftovers()
        previous = self.committed()
        serial = (max(c.serial for c in previous) + 1) if previous else 1
        name = f"step-{step:012d}-{os.urandom(3).hex()}"
        staging = self.root / f"{STAGING_PREFIX}{name}"
        try:
            staging.mkdir()
            write(staging)
            files = {}
            for file in sorted(staging.iterdir()):
                _fsync_file(file)
                files[file.name] = {"size": file.stat().st_size, "sha256": file_digest(file)}
            manifest = {"schema": MANIFEST_SCHEMA, "step": step, "serial": serial, "created_at": iso(utc_now()),
                        "files": files, **info}
            write_atomic(staging, staging / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            final = self.root / name
            os.rename(staging, final)
            fsync_dir(self.root)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)  # first: what it took may be what the check below needs
            if staging.exists():  # a read-only disk refuses the removal too: done at the next save
                self._leftovers.append(staging)
            refused = disk_refusal(exc, self.root, room_needed=room_needed) if isinstance(exc, Exception) else None
            if refused is not None:
                raise refused from exc
            raise
        checkpoint = _checkpoint(final, manifest)
        try:
            write_atomic(self.root, self.root / LATEST, (name + "\n").encode())
            self.retain()
        except OSError as exc:
            if disk_refusal(exc) is None:
                raise
            log.warning("checkpoint %s is saved, but the disk refused tidying after it (%s): LATEST and "
                        "pruning are done at the next save", name, exc)
        return checkpoint

    def _remove_leftovers(self) -> None:
        for staging in list(self._leftovers):
            shutil.rmtree(staging, ignore_errors=True)
            if not staging.exists():
                self._leftovers.remove(staging)

    def retain(self, keep: int | None = None) -> list[Path]:
        """Delete all but the newest ``keep_last`` (or ``keep``, never below two) committed
        checkpoints, by recorded step."""
        keep = self.keep_last if keep is None else max(2, keep)
        committed = self.committed()
        doomed = committed[: max(0, len(committed) - keep)]
        remove_dirs(self.root, [c.path.name for c in doomed])
        return [c.path for c in doomed]

    def sweep_staging(self) -> list[str]:
        """Remove the staging dirs of saves that a crash interrupted (call before training)."""
        removed = []
        self.root.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(self.root):
            if name.startswith((STAGING_PREFIX, DELETING_PREFIX)) or \
                    (name.startswith(LATEST + ".") and name.endswith(".tmp")):
                shutil.rmtree(self.root / name, ignore_errors=True) if (self.root / name).is_dir() \
                    else os.unlink(self.root / name)
                removed.append(name)
        return removed
