"""The daemon's decisions, as small pure functions of what it knows (tested without a daemon)."""

from __future__ import annotations

from datetime import date, datetime

MAX_RETRY_DELAY_S = 3600.0


def retry_delay(attempts: int, base_s: float) -> float:
    """Delay before attempt ``attempts + 1`` of a transiently failed item: base, doubling, capped
    (the original daemon burned three attempts in seconds)."""
    return min(MAX_RETRY_DELAY_S, base_s * 2 ** max(0, attempts - 1))


def error_backoff(consecutive: int) -> float:
    """Pause after the main loop's ``consecutive``-th unexpected error in a row."""
    return min(60.0, 0.5 * 2 ** max(0, consecutive - 1))


def space_needed(checkpoint_bytes: int, margin: float, min_free: int) -> int:
    return int(checkpoint_bytes * margin) + min_free


def snapshot_due(last: str | None, now_local: datetime, at: str) -> str | None:
    """The date to snapshot now, or None: once per calendar day, after ``at`` (HH:MM).

    ``last`` is the persisted date of the last snapshot. A clock jumped back to an earlier
    day never repeats a snapshot; a clock jumped forward takes one for the new day.
    """
    hours, minutes = (int(part) for part in at.split(":"))
    today = now_local.date()
    if (now_local.hour, now_local.minute) < (hours, minutes):
        return None
    if last is not None and date.fromisoformat(last) >= today:
        return None
    return today.isoformat()


def memory_creeping(samples: list[int], limit: int, window: int = 3) -> bool:
    """Resident memory after items grew past ``limit`` over the first sample, and rose over
    each of the last ``window`` items (a plateau after a large first item is not creep)."""
    if limit <= 0 or len(samples) < window + 1:
        return False
    recent = samples[-(window + 1):]
    rising = all(b > a for a, b in zip(recent, recent[1:]))
    return rising and samples[-1] - samples[0] > limit


def first_sight_deadline(not_before: datetime, now_utc: datetime, now_monotonic: float, longest_s: float) -> float:
    """The monotonic deadline of a retry delay recorded as a wall-clock ``not_before`` by
    someone else (an earlier run): what is left of it by the wall clock now, between 0 and the
    longest delay (a clock jumped back since must not hold a retry for as long as the jump)."""
    left = (not_before - now_utc).total_seconds()
    return now_monotonic + min(max(left, 0.0), longest_s)
