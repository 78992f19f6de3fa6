"""The daemon's pure decisions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from trainer.daemon.policy import (
    error_backoff,
    first_sight_deadline,
    memory_creeping,
    retry_delay,
    snapshot_due,
    space_needed,
)


def test_retry_delays_grow_and_are_capped():
    assert [retry_delay(n, 30) for n in (1, 2, 3)] == [30, 60, 120]
    assert retry_delay(20, 30) == 3600


def test_a_retry_time_from_an_earlier_run_is_read_once_and_never_as_more_than_the_longest_delay():
    now = datetime(2031, 5, 14, 12, 0, tzinfo=timezone.utc)
    assert first_sight_deadline(now + timedelta(seconds=30), now, 100.0, 3600) == 130.0
    assert first_sight_deadline(now - timedelta(seconds=30), now, 100.0, 3600) == 100.0, "already over"
    # Written before the clock was set back a day: a day left by the wall clock, an hour at most.
    assert first_sight_deadline(now + timedelta(days=1), now, 100.0, 3600) == 3700.0


def test_error_backoff_grows_and_is_capped():
    assert error_backoff(1) == 0.5 and error_backoff(3) == 2 and error_backoff(50) == 60


def test_snapshot_once_per_day_after_its_time_whatever_the_clock_does():
    at = "03:00"
    assert snapshot_due(None, datetime(2026, 11, 28, 2, 59), at) is None
    assert snapshot_due(None, datetime(2026, 11, 28, 3, 0), at) == "2026-11-28"
    assert snapshot_due("2026-11-28", datetime(2026, 11, 28, 23, 0), at) is None, "not twice a day"
    assert snapshot_due("2026-11-28", datetime(2026, 11, 27, 12, 0), at) is None, "clock jumped back"
    assert snapshot_due("2026-11-28", datetime(2026, 12, 5, 4, 0), at) == "2026-12-05", "jumped forward: once"


def test_memory_creep_needs_growth_past_the_limit_and_a_rising_trend():
    gib = 1 << 30
    assert not memory_creeping([1 * gib, 4 * gib, 4 * gib, 4 * gib, 4 * gib], 2 * gib), "a plateau"
    assert memory_creeping([1 * gib, 2 * gib, 2.5 * gib, 3 * gib, 3.5 * gib], 2 * gib)
    assert not memory_creeping([1 * gib, 1.1 * gib, 1.2 * gib, 1.3 * gib], 2 * gib)


def test_space_needed_is_margin_times_estimate_plus_the_floor():
    assert space_needed(100, 1.5, 1000) == 1150
