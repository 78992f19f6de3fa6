"""Where a staged inbox file came from, and giving it back: the user's only copy is never lost.

An inbox file being taken is renamed into a locked staging dir in ``tmp/`` with an origin
record beside it. If the intake fails or a crash interrupts it, the file goes back to the
inbox under its name (``ingest`` on failure, ``sweep_tmp`` after a crash).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import orjson

from trainer.spool.fsutil import rename_no_replace
from trainer.spool.layout import Layout

if TYPE_CHECKING:
    from pathlib import Path

ORIGIN_NAME = "origin.json"  # in a staging dir: "this data came from inbox/<name>"


def origin_record(name: str) -> bytes:
    """What a staging dir records of the inbox file it holds.

    The raw bytes of the name, hex-encoded: an inbox name need not be valid UTF-8.
    """
    return orjson.dumps({"inbox_name_hex": os.fsencode(name).hex()})


def origin_name(raw: bytes) -> str | None:
    """The inbox name an origin record holds; None unless it is one plain file name."""
    try:
        data = orjson.loads(raw)
        name = os.fsdecode(bytes.fromhex(data["inbox_name_hex"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    # Only a plain file name: a crafted origin must not move data outside the inbox.
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        return None
    return name


def restore_to_inbox(layout: Layout, path: Path, name: str) -> str:
    """Put a staged inbox file back under its name, or a free variant of it, never replacing a
    file that arrived meanwhile; returns the name used."""
    stem, dot, ext = name.rpartition(".")
    for n in range(10_000):
        candidate = name if n == 0 else (f"{stem}.restored-{n}.{ext}" if dot and stem else f"{name}.restored-{n}")
        try:
            rename_no_replace(path, layout.inbox / candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name in the inbox to put {name!r} back")
