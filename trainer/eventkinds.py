"""The kinds of lines in the event log, as a plain ``str`` enum (like ``states``, apart from
it: ``trainctl status`` never writes an event, and building these members is ~0.4 ms of its
start-up)."""

from enum import Enum


class Event(str, Enum):
    """Kinds of lines in the event log."""

    ENQUEUED = "enqueued"
    CLAIMED = "claimed"
    REQUEUED = "requeued"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    HELD = "held"
    RELEASED = "released"
    REMOVED = "removed"
    RETRIED = "retried"
    MOVED = "moved"
    REJECTED = "rejected"  # an inbox file that failed validation (kept, as a failed item)
    RESTORED = "restored"  # a half-ingested inbox file put back after a crash
    EVALUATED = "evaluated"  # an item's held-out share was evaluated at its end
    HELD_BACK = "held_back"  # the regression gate kept a consolidated version aside
    PROMOTED = "promoted"  # a held-back candidate became a version (trainctl promote)
    DISCARDED = "discarded"  # a held-back candidate was removed (trainctl discard)
    CONSOLIDATED = "consolidated"  # a new version was published (id: None; version, parent, items)
    ROLLED_BACK = "rolled_back"  # training continues from an earlier version (id: None)
