"""One daemon per base dir: an exclusive flock on ``run/daemon.lock``.

The kernel drops the lock when the process dies, however it dies, so there is no stale pid
file to clean up; the pid written inside is for display only. trainctl asks whether a daemon
is running by probing the lock, never by trusting a pid or a state file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from typing import TYPE_CHECKING

from trainer.errors import AlreadyRunning
from trainer.spool.fsutil import DISK_ERRNOS, is_locked_by_someone
from trainer.spool.layout import Layout

if TYPE_CHECKING:
    from pathlib import Path


class DaemonLock:
    """One daemon per base dir: an exclusive flock the kernel drops when the process dies,
    so there is no stale pid file to clean. The pid inside is for display only."""

    def __init__(self, layout: Layout) -> None:
        self.path = layout.daemon_lock
        self._fd: int | None = None

    def acquire(self, attempts: int = 20, pause_s: float = 0.05) -> None:
        # trainctl probes the lock with a shared lock held for microseconds; retrying
        # briefly keeps such a probe from being mistaken for a second daemon.
        fd = _open_lock_file(self.path)
        for attempt in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if attempt == attempts - 1:
                    os.close(fd)
                    holder = read_lock_pid(self.path)
                    raise AlreadyRunning(
                        f"another trainer daemon (pid {holder if holder else 'unknown'}) already "
                        f"runs on {self.path.parent.parent}: stop it first, or use another base dir"
                    ) from None
                time.sleep(pause_s)
        self._fd = fd
        _write_pid(self.path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_lock_file(path: Path) -> int:
    """The lock file, opened read-only: flock() needs no write access, and a descriptor open for
    writing, held for the daemon's life, would make ``mount -o remount,ro`` of the base dir's
    filesystem fail (EBUSY) while the daemon runs."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # read-only: it exists, or nothing can run
    return fd


def _write_pid(path: Path) -> None:
    """Write our pid into the lock file, for display, through a descriptor closed at once
    (closing it does not drop the flock, which belongs to the other one). Over the old pid,
    then cut to length: a rewrite in the block the file already has needs no room, so a daemon
    restarted on a full disk still says who it is. If the disk refuses even that (read-only)
    the pid shows as unknown, or as the last one written; the lock holds all the same."""
    text = f"{os.getpid()}\n".encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        return
    try:
        os.pwrite(fd, text, 0)
        os.ftruncate(fd, len(text))
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # never leave a predecessor's pid behind
    finally:
        os.close(fd)


def read_lock_pid(path: Path | str) -> int | None:
    try:
        with open(path, errors="replace") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_holder(layout: Layout) -> int | None:
    """The pid of the daemon holding the lock (0 if it cannot be read), or None if free
    (a ``PlainLayout`` will do)."""
    if is_locked_by_someone(layout.daemon_lock):
        return read_lock_pid(layout.daemon_lock) or 0
    return None


class LauncherLock:
    """The lock as a worker of the distributed launcher sees it: the launcher (this process's
    parent) holds it for the whole run, across the group's restarts, and the worker never
    takes it again (a second flock would conflict with the launcher's own). ``acquire`` checks
    that it is so, and says who holds the base dir otherwise."""

    def __init__(self, layout: Layout, launcher_pid: int) -> None:
        self.layout = layout
        self.launcher_pid = launcher_pid

    def acquire(self) -> None:
        holder = lock_holder(self.layout)
        if holder != self.launcher_pid:
            raise AlreadyRunning(f"the lock of {self.layout.root} is held by pid {holder or 'unknown'}, not by this "
                                 f"worker's launcher (pid {self.launcher_pid}): start the trainer with `trainer run`")

    def release(self) -> None:
        pass  # the launcher's to release
