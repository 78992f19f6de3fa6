"""Published versions as they lie on disk, read without torch.

    models/v001/trainer_version.json   what made the version: its step, its parent, its lineage
                                       (the items that trained it since its parent), eval results
    models/LATEST                      the newest version's name

Written by ``trainer/train/releases.py``; read here by trainctl (``versions``, ``show vNNN``,
``show ITEM``, ``rollback``) and by the daemon's rollback. Versions made before lineage was
recorded have no "lineage" (and a "parent" that may be wrong): every reader copes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import orjson

from trainer.errors import NoSuchItem
from trainer.spool.fsutil import read_regular
from trainer.spool.layout import Layout

VERSION_FILE = "trainer_version.json"
NAME = re.compile(r"v(\d{3,})")
_LIMIT = 16 << 20


def models_dir(layout: Layout) -> Path:
    return layout.root / "models"


def is_name(text: str) -> bool:
    return NAME.fullmatch(text) is not None


def names(models: Path) -> list[str]:
    """Published versions, oldest first (by number, never by mtime)."""
    try:
        found = [n for n in os.listdir(models) if NAME.fullmatch(n)]
    except FileNotFoundError:
        return []
    return sorted(found, key=lambda n: int(n[1:]))


def read(models: Path, name: str) -> dict | None:
    """A version's metadata; None if it is not there or cannot be read."""
    if not is_name(name):
        return None
    try:
        data = orjson.loads(read_regular(models / name / VERSION_FILE, _LIMIT))
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def require(models: Path, name: str) -> dict:
    """A version's metadata, or ``NoSuchItem`` saying which versions there are."""
    meta = read(models, name)
    if meta is None:
        have = names(models)
        raise NoSuchItem(f"no such version: {name!r} (published: {', '.join(have) if have else 'none yet'}; "
                         f"see trainctl versions)")
    return meta


def lineage_items(meta: dict | None) -> list[dict]:
    lineage = (meta or {}).get("lineage")
    items = lineage.get("items") if isinstance(lineage, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def ancestry(models: Path, name: str | None) -> list[str]:
    """``name``, its parent, its parent's parent ... (newest first), as far as the metadata goes."""
    chain: list[str] = []
    while name and is_name(name) and name not in chain:
        chain.append(name)
        name = (read(models, name) or {}).get("parent")
    return chain


def items_after(models: Path, target: str, current: str | None, unpublished: list[dict]) -> list[dict]:
    """The items the current line trained that ``target`` does not contain, in training order:
    those of the versions on the current line back to where it meets ``target``'s, then the
    ones trained since the current line's last version (``unpublished``). What a rollback
    to ``target`` with --requeue queues again."""
    shared = set(ancestry(models, target))
    after: list[dict] = []
    for name in reversed(ancestry(models, current)):
        if name not in shared:
            after.extend(lineage_items(read(models, name)))
    return after + list(unpublished)


def containing(models: Path, item_id: str) -> str | None:
    """The first version whose lineage names the item (None: in no version yet)."""
    for name in names(models):
        if any(entry.get("id") == item_id for entry in lineage_items(read(models, name))):
            return name
    return None
