"""Naming items the short way, like git: any unique prefix of an id's random part.

An id is ``20261128T194440.123456Z-3fa9c1b2``; people type ``3fa9`` (or ``3fa9c1b2``, or
the whole id). ``resolve`` turns what was typed into the one id it names, reading only
directory listings (no metadata), so it costs what ``trainctl status`` costs.
"""

from __future__ import annotations

import os
import re

from trainer.errors import AmbiguousId, NoSuchItem
from trainer.ids import ID_LENGTH, check_id, is_id
from trainer.spool.layout import Layout
from trainer.states import ItemState, Priority

RANDOM_AT = ID_LENGTH - 8  # where the random part starts (after "Z-")
SHORT_MIN = 4  # the shortest form `trainctl list` shows, lengthened where it would be ambiguous
_HEX = re.compile(r"[0-9a-f]{1,8}")


def random_part(item_id: str) -> str:
    return item_id[RANDOM_AT:]


def all_ids(layout: Layout) -> dict[str, str]:
    """Every item id in the spool, with the state it sits in (one listdir per state dir)."""
    found: dict[str, str] = {}
    places = [(layout.pending(p), ItemState.PENDING) for p in Priority.in_service_order()]
    places += [(layout.state_dir(s), s) for s in (ItemState.ACTIVE, ItemState.HELD, ItemState.FAILED,
                                                   ItemState.DONE)]
    for directory, state in places:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if len(name) == ID_LENGTH and is_id(name):
                found.setdefault(name, state.value)
    return found


def matches(ids: dict[str, str], text: str) -> list[str]:
    """The ids ``text`` could name: the id itself, or those whose random part starts with it."""
    if text in ids:
        return [text]
    return sorted(i for i in ids if random_part(i).startswith(text))


def resolve(layout: Layout, text: str) -> str:
    """The full id ``text`` names. A well-formed full id is returned as it is (an item since
    removed can still be named in the event log); a short one must match exactly one item."""
    if is_id(text):
        return text
    if not _HEX.fullmatch(text):
        return check_id(text)  # raises, saying what an id looks like
    ids = all_ids(layout)
    found = matches(ids, text)
    if not found:
        raise NoSuchItem(f"no item's id starts with {text!r}: see trainctl list --all")
    if len(found) > 1:
        listed = ", ".join(f"{random_part(i)} ({ids[i]})" for i in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        raise AmbiguousId(f"{text!r} names {len(found)} items: {listed}{more}: give more characters")
    return found[0]


def short_forms(ids: list[str] | set[str] | dict) -> dict[str, str]:
    """Each id's shortest random-part prefix (at least ``SHORT_MIN`` characters) that no other
    id in ``ids`` shares: what ``trainctl list`` shows."""
    parts = sorted(random_part(i) for i in ids)
    shortest: dict[str, int] = {}
    for before, after in zip(parts, parts[1:]):
        common = len(os.path.commonprefix([before, after]))
        for part in (before, after):
            shortest[part] = max(shortest.get(part, SHORT_MIN), common + 1)
    return {i: random_part(i)[:max(SHORT_MIN, shortest.get(random_part(i), SHORT_MIN))] for i in ids}
