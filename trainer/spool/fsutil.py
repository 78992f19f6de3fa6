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
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING

from trainer.errors import DiskUnwritable

if TYPE_CHECKING:  # not imported at run time: `trainctl status` never needs pathlib
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
    for files that are rewritten all the time and whose loss costs nothing. A failed write
    (a full disk) leaves nothing behind and names ``dest``.
    """
    tmp = staging / f"{dest.name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # marks the file as live for sweep_staging
        os.fchmod(fd, mode)  # the mode the group needs, whatever the writer's umask
        with naming(dest):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    if durable:
        fsync_dir(dest.parent)


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """os.write and os.fsync raise without a file name: add ``path``, so the error says where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def overwrite_in_place(path: Path, data: bytes) -> bool:
    """Write ``data`` over the start of an existing regular file, without allocating: only if it
    fits in the blocks the file already has (padded with spaces to its old length, so a JSON
    reader sees the same record). False when it does not fit or the file is not there.

    Not atomic (a reader may catch it half-written): only for a display-only file, when the
    disk has no room for a new copy to rename into place.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or len(data) > st.st_blocks * 512:
            return False
        padded = data.rstrip(b"\n").ljust(max(st.st_size, len(data)) - 1) + b"\n"
        return os.pwrite(fd, padded, 0) == len(padded)
    finally:
        os.close(fd)


def append_line(path: Path, line: bytes, mode: int = 0o640) -> None:
    """Append one whole line to a file read line by line (``append_to``), creating it if need
    be. O_NOFOLLOW: a symlink put in the file's place must not make us append to another."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, mode)
    try:
        append_to(fd, line, path)
    finally:
        os.close(fd)


def append_to(fd: int, lines: bytes, path: Path) -> None:
    """Append whole lines to the file open as ``fd`` (O_RDWR | O_APPEND), or nothing at all.

    One write() on an O_APPEND descriptor, so concurrent writers never interleave within a
    line. A disk that fills mid-line makes write() store only part of it: the file is then cut
    back to where the lines began (an flock keeps the other appenders out meanwhile; it is
    dropped when ``fd`` is closed) and the disk's error raised, naming ``path``. A line a
    crash left without its newline is ended first, so only that one is unreadable, never the
    next one too.
    """
    fcntl.flock(fd, fcntl.LOCK_EX)
    start = os.fstat(fd).st_size
    if start and os.pread(fd, 1, start - 1) != b"\n":
        lines = b"\n" + lines
    try:
        with naming(path):
            written = os.write(fd, lines)
            if written < len(lines):
                os.write(fd, lines[written:])  # a second try says why (ENOSPC, EDQUOT), or finishes it
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)  # frees what the torn line took: needs no room
        raise


# The ways a filesystem refuses a write that are the disk's doing: neither the data's nor the
# code's, and gone once someone makes room (or remounts it read-write).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
_DISK_MESSAGES = {code: os.strerror(code) for code in DISK_ERRNOS}  # "No space left on device", ...


def disk_refusal(exc: BaseException, path: Path | None = None, *, room_needed: int = 0) -> DiskUnwritable | None:
    """``exc`` as a DiskUnwritable if the disk refused the write; None if something else failed.

    An OSError with ENOSPC, EDQUOT or EROFS anywhere in the exception's chain decides. torch's
    and safetensors' writers wrap the OS error in their own without its errno, but keep its
    text ("open file failed with strerror: No space left on device"): the C library's message
    for one of those errnos in the error's text decides next. Failing that, the filesystem of
    ``path`` is asked: read-only, out of inodes, or with less free space than ``room_needed``
    (a failed save has freed what it took, so "no space at all" is too strict a test).
    """
    for error in _chain(exc):
        if isinstance(error, DiskUnwritable):
            return error
        if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
            from pathlib import Path  # on this error path only

            where = error.filename if error.filename is not None else path
            return _unwritable(error.errno, Path(os.fsdecode(where)) if where is not None else None)
        text = str(error)
        for code, message in _DISK_MESSAGES.items():
            if message in text:
                return _unwritable(code, path)
    if path is None:
        return None
    try:
        fs = os.statvfs(_existing(path))
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return _unwritable(errno.EROFS, path)
    if _out_of_inodes(fs) or fs.f_bavail * fs.f_frsize < max(room_needed, 1):
        return _unwritable(errno.ENOSPC, path)
    return None


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _out_of_inodes(fs: os.statvfs_result) -> bool:
    return fs.f_files > 0 and fs.f_favail == 0  # f_files 0: the filesystem does not count inodes


def _unwritable(code: int, path: Path | None) -> DiskUnwritable:
    where = str(path) if path is not None else "the base dir"
    if code == errno.EROFS:
        message = f"read-only filesystem: cannot write {where}"
    elif code == errno.EDQUOT:
        message = f"disk quota exceeded writing {where}"
    else:
        try:
            inodes = path is not None and _out_of_inodes(os.statvfs(_existing(path)))
        except OSError:
            inodes = False
        message = f"no free inodes left writing {where}" if inodes else f"no space left writing {where}"
    return DiskUnwritable(message, errno=code, path=str(path) if path is not None else None)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (statvfs needs something that exists)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


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
        import shutil  # lazily: it costs every trainctl command ~2 ms of start-up

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
        import shutil  # lazily: it costs every trainctl command ~2 ms of start-up

        shutil.rmtree(parent / name, ignore_errors=True)
    return leftovers
