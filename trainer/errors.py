"""Every error raised on purpose, in one torch-free module.

Each carries a message meant for a person: what is wrong, with which path or key, and how
to fix it. The CLI prints it as one line; nothing here is a bug report.
"""

import errno


class TrainerError(Exception):
    """Base class: a problem the user or the operator can act on."""


class ConfigError(TrainerError):
    """The config file is missing, unreadable or has an unknown key or a bad value."""


class NotABaseDir(TrainerError):
    """The base directory does not exist or was never initialised with `trainctl init`."""


class FormatMismatch(TrainerError):
    """The base directory was written by a different, incompatible on-disk format version."""


class LayoutError(TrainerError):
    """The base directory's layout is broken: a spool dir is missing or on another filesystem."""


class NoSuchItem(TrainerError):
    """No item with that id exists (or the id is not a well-formed id)."""


class UnknownVersion(NoSuchItem):
    """No published version, held-back candidate or base model by that name."""


class GateRefused(TrainerError):
    """Promoting a held-back candidate that still fails the regression gate (needs --force)."""


class InvalidData(TrainerError):
    """A training file failed validation; nothing was queued."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class WrongState(TrainerError):
    """The item is not in a state that allows the operation (e.g. removing the active item)."""


class NeedsRoot(TrainerError):
    """The operation changes the system (installing units): run it as root."""


class InstallError(TrainerError):
    """The systemd units cannot be installed as asked (a venv ProtectHome would hide, a missing entry point)."""


class AlreadyRunning(TrainerError):
    """Another daemon holds this base dir's lock."""


class CorruptMeta(ValueError):
    """An item's meta.json exists but does not hold valid metadata."""


class ItemFailed(Exception):
    """Training this item failed; ``transient`` failures may succeed on a later attempt.

    Raised by the engine and by the daemon's checks at claim; here, so that the daemon can
    fail an item for a data problem without importing torch.
    """

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class CorruptCheckpoint(Exception):
    """A checkpoint failed verification."""


class NotEnoughSpace(OSError):
    """Free space does not cover what a snapshot or a version would write."""

    def __init__(self, path, need: int, have: int) -> None:
        super().__init__(errno.ENOSPC, f"disk: need {need:,} bytes, have {have:,}", str(path))
        self.need, self.have = need, have


class DiskUnwritable(TrainerError):
    """The filesystem refused a write: full (ENOSPC), over quota (EDQUOT) or read-only (EROFS).

    The disk's fault, never the item's: the daemon blocks until writes succeed again.
    ``errno`` says which, ``path`` where it was seen; the message is one line for a person.
    """

    def __init__(self, message: str, *, errno: int, path: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.path = path


# Control flow inside the daemon, raised on purpose and caught by its main loop.


class Shutdown(Exception):
    """Leave the main loop: a stop request or a signal."""


class RestartRequested(Exception):
    """Resident memory kept growing: checkpointed, exit for systemd to restart the daemon cleanly."""


class WorldLost(BaseException):
    """A collective failed: another rank of the group is gone (killed, crashed, unreachable).

    A BaseException, like SystemExit: no ``except Exception`` on the way (the main loop's, an
    item's failure handling) may take it for an error of the item and carry on with a group
    that cannot be repaired from inside. The process exits; torch's elastic agent restarts the
    whole group from the last checkpoint (an interrupted attempt of the item in training)."""


class AmbiguousId(TrainerError):
    """A short id matches more than one item: the message lists them."""
