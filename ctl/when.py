"""Times as people type them for ``history --since/--until``: journalctl's words.

``now``, ``today``, ``yesterday``, ``tomorrow`` (midnight, local time, as journalctl means
them), relative times (``-1h``, ``+30min``, ``-2 days``, ``90s ago``), a bare age (``30m``,
``2h``, ``7d``: that long ago) and ISO dates or times (``2026-11-28``, ``2026-11-28 09:00``;
without a zone, local time, again as journalctl reads them).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_RELATIVE = re.compile(r"([+-]?)\s*(\d+(?:\.\d+)?)\s*([a-z]+)(\s+ago)?")
_DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}
HELP = "now, today, yesterday, -1h, +30min, 2 days ago, an age (30m, 2h, 7d) or an ISO time (2026-11-28T09:00)"


def parse(text: str, now: datetime) -> datetime:
    """The moment ``text`` names, as an aware datetime; ``ValueError`` if it names none.
    ``now`` is aware (UTC); local-time words use this machine's time zone."""
    word = text.strip().lower()
    local_now = now.astimezone()
    if word == "now":
        return now
    if word in _DAYS:
        midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight + timedelta(days=_DAYS[word])
    relative = _RELATIVE.fullmatch(word)
    if relative:
        sign, amount, unit, ago = relative.groups()
        if unit not in UNITS or (sign == "+" and ago):
            raise ValueError(f"unknown time unit in {text!r}")
        seconds = float(amount) * UNITS[unit]
        return now + timedelta(seconds=seconds) if sign == "+" else now - timedelta(seconds=seconds)
    moment = datetime.fromisoformat(text.strip())
    return moment if moment.tzinfo else moment.astimezone()  # naive: local time, like journalctl
