"""The queue read by listing its directories, nothing else: how many items each state holds
and which item is active. Apart from ``queue.py`` (which re-exports both) because this is
all of the queue ``trainctl status`` reads: the state changes and the event kinds they log
are not loaded for it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from trainer.ids import ID_LENGTH, is_id
from trainer.states import ItemState, Priority

if TYPE_CHECKING:
    from pathlib import Path  # only annotations here: `trainctl status` never imports pathlib

    from trainer.spool.layout import Layout


def entries(directory: Path) -> list[str]:
    """Item ids in ``directory``, sorted (= queue order); foreign names are ignored."""
    try:
        return sorted(name for name in os.listdir(directory) if is_id(name))
    except FileNotFoundError:
        return []


def _count(directory: Path) -> int:
    """How many names in ``directory`` are ID_LENGTH long and no dotfile (such as an editor's
    swap file): its items, for counting (``is_id`` checks more). It runs over every item on
    every ``trainctl status``: the names are listed as bytes (none is decoded) and, where no
    dotfile is among them (none sorts before "/"), counted in C rather than one Python step
    per name."""
    try:
        names = os.listdir(os.fsencode(directory))
    except FileNotFoundError:
        return 0
    if min(names, default=b"/") >= b"/":
        return list(map(len, names)).count(ID_LENGTH)
    return sum(1 for name in names if len(name) == ID_LENGTH and not name.startswith(b"."))


def counts(layout: Layout) -> dict[str, int]:
    """How many items each state holds (pending split by priority): one listdir each (a
    ``PlainLayout`` will do)."""
    result = {f"pending.{p.value}": _count(layout.pending(p)) for p in Priority}
    result["pending"] = sum(result[f"pending.{p.value}"] for p in Priority)
    for state in (ItemState.ACTIVE, ItemState.HELD, ItemState.FAILED, ItemState.DONE):
        result[state.value] = _count(layout.state_dir(state))
    return result


def active_id(layout: Layout) -> str | None:
    """The id of the item the daemon has claimed, if any (a ``PlainLayout`` will do)."""
    ids = entries(layout.state_dir(ItemState.ACTIVE))
    return ids[0] if ids else None
