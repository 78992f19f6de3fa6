"""Waking the idle daemon at once: inotify where available (Linux), polling otherwise.

The daemon waits for a signal, a file arriving in the inbox, a new item or a control request,
and at most a timeout. inotify is reached through libc with ctypes (the stdlib has no
binding); renames into the inbox are reported by name, so such files are taken at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


class Watcher:
    """``wait(timeout)`` returns the names renamed into watched dirs (empty on timeout)."""

    def __init__(self, directories: list[Path], wake_fd: int) -> None:
        self.wake_fd = wake_fd
        self.fd = -1
        self._dirs: dict[int, Path] = {}
        libc_name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return  # no inotify: the timeout turns the wait into polling
        if fd < 0:
            return
        self.fd = fd
        for directory in directories:
            wd = libc.inotify_add_watch(fd, os.fsencode(directory), IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE)
            if wd >= 0:
                self._dirs[wd] = directory

    @property
    def uses_inotify(self) -> bool:
        return self.fd >= 0

    def wait(self, timeout: float) -> set[tuple[Path, str]]:
        fds = [self.wake_fd] + ([self.fd] if self.fd >= 0 else [])
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        except InterruptedError:
            return set()
        if self.wake_fd in ready:
            try:
                os.read(self.wake_fd, 4096)
            except BlockingIOError:
                pass
        return self._drain() if self.fd in ready else set()

    def _drain(self) -> set[tuple[Path, str]]:
        renamed: set[tuple[Path, str]] = set()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return renamed
                raise
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & IN_MOVED_TO and wd in self._dirs:
                    renamed.add((self._dirs[wd], os.fsdecode(raw)))

