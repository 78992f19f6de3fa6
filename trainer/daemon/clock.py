"""The daemon's clocks, read once per loop iteration and handed down as one value.

Wall time (UTC) is for what people read and for what is recorded for them (a retry's
``not_before``, the heartbeat's time); local time decides the daily snapshot's day, a promise
made in wall time; the monotonic clock measures every duration the daemon decides on (inbox
settling, retry delays, checkpoint-by-time). Across processes the heartbeat carries its
monotonic reading too (``trainer.clock``). A test passes its own clock to move any of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from trainer.timefmt import utc_now


@dataclass(frozen=True)
class Now:
    utc: datetime
    local: datetime
    monotonic: float


class SystemClock:
    def now(self) -> Now:
        return Now(utc=utc_now(), local=datetime.now(), monotonic=time.monotonic())
