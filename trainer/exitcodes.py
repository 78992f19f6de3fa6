"""Exit codes shared by trainctl and the daemon (LSB-style 3 = not running, sysexits above 64)."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the thing waited for failed, or an operation did not succeed
    USAGE = 2  # bad command line (click's own code for usage errors)
    NOT_RUNNING = 3  # no daemon holds the base dir's lock
    NO_SUCH_ITEM = 4
    DATA_INVALID = 65  # EX_DATAERR: a training file failed validation
    TIMEOUT = 75  # EX_TEMPFAIL: `wait` ran out of time
    NO_PERMISSION = 77  # EX_NOPERM: the OS refused access to a base-dir path
    CONFIG = 78  # EX_CONFIG: bad config, bad or foreign base dir
    LOCKED = 73  # EX_CANTCREAT: another daemon already holds the base dir
    RESTART = 100  # the daemon asks systemd for a clean restart (memory kept growing)
