"""Logging for the daemon: readable lines in a terminal, structured entries in the journal.

Under systemd, stderr is connected to the journal and JOURNAL_STREAM names that stream; then
records go to journald's native socket, each with its PRIORITY, so a traceback stays one
entry (a stream splits it into one entry per line). If that socket cannot be reached, lines
go to stderr with a ``<N>`` priority prefix, which journald also understands.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def priority(level: int) -> int:
    for threshold in sorted(PRIORITY, reverse=True):
        if level >= threshold:
            return PRIORITY[threshold]
    return 7


def stderr_is_journal(environ=os.environ, stream=sys.stderr) -> bool:
    """JOURNAL_STREAM is "DEV:INODE" of the journal stream; it must be our stderr's."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:  # binary-safe form: NAME\n<64-bit LE length><data>\n
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    """Native journal protocol: one datagram per record, a traceback included."""

    def __init__(self, identifier: str = "trainer", address: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            payload = b"".join([
                _field("MESSAGE", message), _field("PRIORITY", str(priority(record.levelno))),
                _field("SYSLOG_IDENTIFIER", self.identifier), _field("LOGGER", record.name),
                _field("CODE_FILE", record.pathname), _field("CODE_LINE", str(record.lineno)),
            ])
            self.sock.sendto(payload, self.address)
        except Exception:
            self.handleError(record)


class PrefixFormatter(logging.Formatter):
    """``<N>`` on every line, for journald reading our stderr as a stream."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup(level: int = logging.INFO, environ=os.environ, stream=sys.stderr) -> logging.Handler:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler: logging.Handler
    if stderr_is_journal(environ, stream) and os.path.exists(JOURNAL_SOCKET):
        handler = JournalHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    elif stderr_is_journal(environ, stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PrefixFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("transformers", "peft", "accelerate", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
