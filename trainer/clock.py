"""The two clocks: the wall clock for what people read, the monotonic clock for what decides.

The wall clock jumps: an NTP step, a clock set by hand, a VM restored from a snapshot. File
times are stamped from it too, so after a jump forward every file looks old, and after a
jump back some look written in the future. So every decision about how long something took,
or how old something is, is made on the monotonic clock (``time.monotonic``, the kernel's
CLOCK_MONOTONIC), which never jumps; wall times are kept for people (logs, events, metadata)
and for the few promises made in wall time (the daily snapshot "after 03:00").

Across processes, monotonic readings are comparable only within one boot and one time
namespace (Linux 5.6 and later can offset CLOCK_MONOTONIC per namespace). ``domain`` names
that pair; a reading from another domain (a reboot since, another machine sharing the base
dir) tells nothing, and whoever compares must fall back to the wall clock.
"""

from __future__ import annotations

import functools
import math
import os
import time
from datetime import datetime, timezone
from typing import NamedTuple

BOOT_ID = "/proc/sys/kernel/random/boot_id"


# A NamedTuple, not a frozen dataclass: built at import, and a dataclass costs every trainctl
# command ~0.5 ms of start-up (it compiles its methods); this one needs none of theirs.
class Reading(NamedTuple):
    """One moment on both clocks."""

    wall: datetime  # UTC: for people, and for what was promised in wall time
    monotonic: float  # CLOCK_MONOTONIC seconds: for deciding
    domain: str | None  # where ``monotonic`` means something; None when unknown


def read() -> Reading:
    return Reading(wall=datetime.now(timezone.utc), monotonic=time.monotonic(), domain=domain())


@functools.cache
def domain() -> str | None:
    """This boot's id and this process's time namespace; None if the boot id is unknown."""
    try:
        with open(BOOT_ID) as fh:
            boot = fh.read().strip()
    except OSError:
        return None
    try:
        namespace = os.readlink("/proc/self/ns/time")
    except OSError:
        namespace = ""  # no time namespaces (before Linux 5.6): one monotonic clock per boot
    return f"{boot} {namespace}".strip() or None


def stamp(reading: Reading) -> dict:
    """A reading's monotonic side, as written in a file another process reads."""
    return {"domain": reading.domain, "monotonic": reading.monotonic}


def elapsed(stamped: object, now: Reading) -> float | None:
    """Monotonic seconds from a ``stamp`` to ``now``; None when they cannot be compared
    (another boot or time namespace, an unknown domain, a damaged or impossible stamp)."""
    if not isinstance(stamped, dict) or now.domain is None or stamped.get("domain") != now.domain:
        return None
    then = stamped.get("monotonic")
    if not isinstance(then, (int, float)) or isinstance(then, bool) or not math.isfinite(then):
        return None
    seconds = now.monotonic - then
    return seconds if seconds >= 0 else None  # the monotonic clock never runs back: not ours


class Now(NamedTuple):  # a NamedTuple for the same reason as Reading
    """What the daemon's loop reads once per iteration and hands down: UTC for records, local
    time for the daily snapshot's day, the monotonic clock for every duration it decides on."""

    utc: datetime
    local: datetime
    monotonic: float


class SystemClock:
    """The real clocks; a test passes its own object with ``now()`` to move any of them."""

    def now(self) -> Now:
        return Now(utc=datetime.now(timezone.utc), local=datetime.now(), monotonic=time.monotonic())
