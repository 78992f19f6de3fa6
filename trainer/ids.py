"""Item ids: UTC time to the microsecond plus randomness, so names sort in arrival order.

``20261128T194440.123456Z-3fa9c1b2``: ``ls`` shows the queue in FIFO order, and 32 random
bits make two processes enqueueing in the same microsecond still get distinct ids. An id is
checked against the exact pattern before it touches a path, so ``../x`` can never be one.
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone

from trainer.errors import NoSuchItem

ID_PATTERN = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-[0-9a-f]{8}")  # ASCII digits only
ID_LENGTH = len("20261128T194440.123456Z-3fa9c1b2")


def new_id(now_ns: int | None = None) -> str:
    ns = time.time_ns() if now_ns is None else now_ns
    seconds, micros = divmod(ns // 1000, 1_000_000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return f"{stamp}.{micros:06d}Z-{os.urandom(4).hex()}"


def is_id(text: str) -> bool:
    return ID_PATTERN.fullmatch(text) is not None


def check_id(text: str) -> str:
    """Return ``text`` if it is a well-formed id; otherwise raise ``NoSuchItem``."""
    if not is_id(text):
        raise NoSuchItem(
            f"not an item id: {text!r} (ids look like 20261128T194440.123456Z-3fa9c1b2; "
            f"see trainctl list)"
        )
    return text


def id_time(item_id: str) -> datetime:
    """The enqueue time encoded in an id."""
    return datetime.strptime(item_id[:22], "%Y%m%dT%H%M%S.%f").replace(tzinfo=timezone.utc)
