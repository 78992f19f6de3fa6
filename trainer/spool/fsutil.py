"""Crash-safe publishing: stage in ``tmp/``, fsync, rename into place, fsync the directory.

A reader never sees a half-written file: it sees the old version or the new one. Every
staging file or directory is flock()ed by its writer for as long as it lives, so the
daemon's recovery sweep can tell debris (lock free) from a live writer's work (lock held).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o640  # group-readable: trainctl users share the daemon's group
DIR_MODE = 0o2770  # group-writable and setgid, so new entries keep the daemon's group
DELETING_PREFIX = ".deleting-"  # a directory being removed by retention (swept after a crash)


def make_group_dir(path: Path) -> None:
    """mkdir with DIR_MODE, chmod only when the umask took bits away.

    The setgid bit comes from the parent (a directory made inside a setgid directory inherits
    it), so under the systemd unit (a setgid StateDirectory, UMask=0007) no mode with setgid is
    ever passed to a syscall: RestrictSUIDSGID=yes refuses those with EPERM.
    """
    os.mkdir(path, DIR_MODE & 0o777)
    if stat.S_IMODE(os.stat(path).st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def read_regular(path: Path, limit: int) -> bytes:
    """Read a small file of ours that anyone in the group could replace: never follows a
    symlink (the last component), never waits on a fifo or reads a device put in its place,
    never reads more than ``limit`` bytes. Raises OSError (EINVAL, EFBIG) for those."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        chunks, left = [], limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:  # grew while we read
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(staging: Path, dest: Path, data: bytes, *, mode: int = FILE_MODE, durable: bool = True) -> None:
    """Publish ``data`` as ``dest``: write in ``staging``, fsync, rename, fsync(dest's dir).

    ``durable=False`` skips both fsyncs: readers still see the old or the new file whole
    (the rename is atomic), but a power loss may bring back an older one or an empty one. Only
    for files that are rewritten all the time and whose loss costs nothing.
    """
    tmp = staging / f"{dest.name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # marks the file as live for sweep_staging
        os.fchmod(fd, mode)  # the mode the group needs, whatever the writer's umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    if durable:
        fsync_dir(dest.parent)


def unlink_durably(path: Path) -> bool:
    """Remove a file and make the removal durable; False if it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def rename_no_replace(src: Path, dest: Path) -> None:
    """Move a regular file to ``dest`` unless something already has that name (FileExistsError).

    link() refuses an existing name atomically, where an exists-check before rename() could
    lose a file that appeared in between.
    """
    os.link(src, dest, follow_symlinks=False)
    os.unlink(src)
    fsync_dir(dest.parent)
    if src.parent != dest.parent:
        fsync_dir(src.parent)


def rename_durably(src: Path, dest: Path) -> None:
    """Rename and make both directory entries durable (the old one vanishes, the new appears)."""
    os.rename(src, dest)
    fsync_dir(dest.parent)
    if src.parent != dest.parent:
        fsync_dir(src.parent)


class StagingDir:
    """A directory under ``tmp/`` that its creator holds a lock on until it is published."""

    def __init__(self, staging: Path, name: str) -> None:
        self.path = staging / name
        make_group_dir(self.path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.published = False
        self._keep = False

    def publish(self, dest: Path) -> None:
        rename_durably(self.path, dest)
        self.published = True

    def keep(self) -> None:
        """Leave the directory for the recovery sweep instead of removing it on close (it
        holds something that must not be deleted, such as a user's only copy of a file)."""
        self._keep = True

    def close(self) -> None:
        """Remove the directory unless it was published or kept, then drop the lock."""
        if not self.published and not self._keep:
            import shutil  # lazily: ~5 ms of every trainctl command's start-up

            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)

    def __enter__(self) -> "StagingDir":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def is_locked_by_someone(path: Path) -> bool:
    """True when a live process holds an exclusive flock on ``path``.

    Probes with a non-blocking *shared* lock, dropped at once, so the probe itself can never
    make an exclusive locker fail. A missing path or a symlink (never followed) is unlocked.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # closing drops the shared lock we may just have taken
    return False


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[int]:
    """Hold an exclusive flock on ``path`` for the ``with`` body.

    Opened read-only (flock needs no write access), so any group member can lock a lock file
    another member created; created if missing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o660)
        os.fchmod(fd, 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on ``path``'s filesystem."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def remove_dirs(parent: Path, names: list[str]) -> None:
    """Remove these directories of ``parent``, each renamed to ``.deleting-NAME`` first.

    Killed in the middle of an rmtree, a directory must not be left under its real name with
    half its files gone (a checkpoint that looks committed, a version that half loads): the
    rename takes it out of the names readers look at, and ``sweep_deleting`` finishes the job.
    """
    sweep_deleting(parent)
    for name in names:
        dying = parent / f"{DELETING_PREFIX}{name}"
        os.rename(parent / name, dying)
        shutil.rmtree(dying, ignore_errors=True)
    if names:
        fsync_dir(parent)


def sweep_deleting(parent: Path) -> list[str]:
    """Finish removals a crash interrupted (``.deleting-*`` left in ``parent``)."""
    try:
        leftovers = [n for n in os.listdir(parent) if n.startswith(DELETING_PREFIX)]
    except FileNotFoundError:
        return []
    for name in leftovers:
        shutil.rmtree(parent / name, ignore_errors=True)
    return leftovers
