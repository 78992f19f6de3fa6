"""Logging for the daemon: readable lines in a terminal, structured entries in the journal.

Under systemd, stderr is connected to the journal and JOURNAL_STREAM names that stream; then
records go to journald's native socket, each with its PRIORITY, so a traceback stays one
entry (a stream splits it into one entry per line). If that socket cannot be reached, lines
go to stderr with a ``<N>`` priority prefix, which journald also understands.

Outside systemd the same lines also go to ``logs/trainer.log`` in the base dir, rotated by
size (``LogFile``), so that ``trainctl logs`` finds them; ``run/log.json`` says which of the
two the daemon uses. While an item trains, every record is tagged with its id (``[ID]`` in
the text, ``TRAINER_ITEM=`` in the journal), so ``trainctl logs --item ID`` finds them all.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import struct
import sys

import orjson

from trainer.spool.fsutil import make_group_dir, write_atomic

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "trainer"  # SYSLOG_IDENTIFIER of every journal entry
LOG_FILE_BYTES = 10 << 20  # the log file is rotated past this size...
LOG_FILE_BACKUPS = 4  # ...keeping this many older ones: at most 50 MiB
LINE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s:%(item_tag)s %(message)s"
JOURNAL_FORMAT = "%(name)s:%(item_tag)s %(message)s"  # journald adds the time
TIME_FORMAT = "%Y-%m-%d %H:%M:%S%z"  # with the offset: trainctl logs --since compares exactly
_item: str | None = None  # the item in training, tagged on every record
_rank: int | None = None  # this process's rank when training runs on several (None: alone)


def tag_item(item_id: str | None) -> None:
    """From now on, records concern ``item_id`` (None: no item)."""
    global _item
    _item = item_id


def tag_rank(rank: int | None) -> None:
    """Every record of this process says which rank it comes from (``[rank N]``, ``TRAINER_RANK=``)."""
    global _rank
    _rank = rank


class ItemTag(logging.Filter):
    """Adds ``item_id`` and ``item_tag`` (" [rank N]" when there are ranks, then " [ID]" unless
    the message already names the item)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.item_id = _item
        record.rank = _rank
        rank = f" [rank {_rank}]" if _rank is not None else ""
        record.item_tag = rank + (f" [{_item}]" if _item and _item not in record.getMessage() else "")
        return True


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

    def __init__(self, identifier: str = IDENTIFIER, address: str = JOURNAL_SOCKET) -> None:
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
                _field("TRAINER_ITEM", item) if (item := getattr(record, "item_id", None)) else b"",
                _field("TRAINER_RANK", str(rank)) if (rank := getattr(record, "rank", None)) is not None else b"",
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
        handler.setFormatter(logging.Formatter(JOURNAL_FORMAT))
    elif stderr_is_journal(environ, stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PrefixFormatter(JOURNAL_FORMAT))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(LINE_FORMAT, TIME_FORMAT))
    handler.addFilter(ItemTag())
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("transformers", "peft", "accelerate", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


class LogFile(logging.handlers.RotatingFileHandler):
    """The base dir's log file, rotated by size. Display only: a write the disk refuses (full,
    read-only) loses those lines, is said once on stderr, and never reaches the daemon, which
    keeps training (the same rule as the state file)."""

    def __init__(self, path, max_bytes: int = LOG_FILE_BYTES, backups: int = LOG_FILE_BACKUPS) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self.failing = False
        self.setFormatter(logging.Formatter(LINE_FORMAT, TIME_FORMAT))
        self.addFilter(ItemTag())

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)  # errors land in handleError, which drops the stream
        if self.stream is None:
            return
        # Closed after every record (reopened by the next): a file held open for writing pins
        # its filesystem (a remount read-only fails with EBUSY), and log records are few.
        stream, self.stream = self.stream, None
        try:
            stream.close()
        except OSError:
            pass
        if self.failing:
            self.failing = False
            sys.stderr.write(f"trainer: the log file {self.baseFilename} is written again\n")

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if self.stream is not None:  # a buffer that could not be flushed: drop it, reopen next time
            stream, self.stream = self.stream, None
            try:
                stream.close()
            except OSError:
                pass
        if not self.failing:
            self.failing = True
            why = getattr(exc, "strerror", None) or exc
            sys.stderr.write(f"trainer: cannot write the log file {self.baseFilename} ({why}): its lines are "
                             f"lost until it can be written again (the daemon goes on)\n")


def unit_name(cgroup_file: str = "/proc/self/cgroup") -> str | None:
    """The systemd unit this process runs in (``trainer@1.service``), from its cgroup path."""
    try:
        with open(cgroup_file) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        for part in reversed(line.rpartition(":")[2].split("/")):
            if part.endswith(".service"):
                return part
    return None


def add_log_file(layout, environ=os.environ, stream=sys.stderr) -> bool:
    """Outside systemd, add the base dir's log file (True); under it, nothing (False). Every
    process of the trainer on this node adds it (the ranks too: appends of whole records)."""
    if stderr_is_journal(environ, stream):
        return False
    try:
        make_group_dir(layout.logs_dir)
    except FileExistsError:
        pass
    except OSError as exc:
        sys.stderr.write(f"trainer: cannot create {layout.logs_dir} ({exc.strerror}): no log file\n")
    logging.getLogger().addHandler(LogFile(layout.log_file))
    return True


def to_base_dir(layout, environ=os.environ, stream=sys.stderr) -> None:
    """Outside systemd, add the base dir's log file; either way, say in ``run/log.json`` where
    the log goes, for ``trainctl logs``. Neither may stop the daemon: both are display only."""
    journal = not add_log_file(layout, environ, stream)
    target = {"journal": journal, "pid": os.getpid()}
    if journal:
        target.update(unit=unit_name(), identifier=IDENTIFIER)
    else:
        target["file"] = str(layout.log_file.relative_to(layout.root))
    try:
        write_atomic(layout.tmp, layout.log_target, orjson.dumps(target) + b"\n", durable=False)
    except OSError as exc:
        logging.getLogger("trainer.daemon").warning("cannot write %s (%s): trainctl logs will guess where the "
                                                    "log is", layout.log_target, exc.strerror or exc)
