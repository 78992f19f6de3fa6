"""The names of states, as plain ``str`` enums so they serialise as themselves."""

from enum import Enum


class Priority(str, Enum):
    """Pending items are served high before normal before low, FIFO within each."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @classmethod
    def in_service_order(cls) -> tuple["Priority", ...]:
        return (cls.HIGH, cls.NORMAL, cls.LOW)


class ItemState(str, Enum):
    """Where an item is: the directory it sits in *is* its state."""

    PENDING = "pending"
    ACTIVE = "active"
    HELD = "held"
    FAILED = "failed"
    DONE = "done"


class DaemonState(str, Enum):
    """What the daemon says it is doing, in its state file."""

    STARTING = "starting"
    IDLE = "idle"
    TRAINING = "training"
    PAUSED = "paused"
    BLOCKED = "blocked"
    CONSOLIDATING = "consolidating"
    STOPPED = "stopped"


class Liveness(str, Enum):
    """What `trainctl status` concludes about the daemon, from its lock and heartbeat."""

    RUNNING = "running"  # lock held, heartbeat fresh
    UNRESPONSIVE = "unresponsive"  # lock held, heartbeat stale: hung or stuck in a long call
    UNKNOWN = "unknown"  # lock held, no heartbeat to judge: the state file is damaged, missing or unwritable
    NOT_RUNNING = "not-running"  # lock free: no daemon (a crash leaves a stale state file)
