"""Every error the torch-free core raises on purpose.

Each carries a message meant for a person: what is wrong, with which path or key, and how
to fix it. The CLI prints it as one line; nothing here is a bug report.
"""


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


class InvalidData(TrainerError):
    """A training file failed validation; nothing was queued."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class WrongState(TrainerError):
    """The item is not in a state that allows the operation (e.g. removing the active item)."""


class NeedsRoot(TrainerError):
    """The operation changes the system (installing units): run it as root."""
