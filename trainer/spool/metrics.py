"""Per-item training figures, ``metrics/ID.jsonl``: one JSON object per optimizer step, and
lines with a "kind" ("eval": the item's held-out evaluation at its end).

A line without ``"kind"`` is a step; ``"kind": "eval"`` an evaluation at a global step
(``step``); a kind this release does not know (a newer writer's) is skipped, not an error.

The engine appends them whole or not at all (``fsutil.append_line``); a crash or a disk
filled before that rule could still have left a torn line. Read here without torch, the way
the event log is read: a line that does not parse is skipped and counted, never fatal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from trainer.spool.layout import Layout


@dataclass
class MetricsLog:
    """The step records of one item, in the order written, and how many lines were unreadable."""

    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # "kind": "eval" lines (held-out evaluations)
    unreadable_lines: int = 0


def path(layout: Layout, item_id: str) -> Path:
    return layout.root / "metrics" / f"{item_id}.jsonl"


def read(layout: Layout, item_id: str) -> MetricsLog:
    log = MetricsLog()
    try:
        raw = path(layout, item_id).read_bytes()
    except FileNotFoundError:
        return log
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            log.unreadable_lines += 1
            continue
        kept = {None: log.steps, "eval": log.evals}.get(record.get("kind"))
        if kept is None:
            continue  # a kind of line this release does not know
        if isinstance(record.get("step"), int):
            kept.append(record)
        else:
            log.unreadable_lines += 1
    return log


def item_ids(layout: Layout) -> list[str]:
    """The items that have a metrics file, least recently written first."""
    directory = layout.root / "metrics"
    try:
        found = [(entry.stat().st_mtime_ns, entry.name[: -len(".jsonl")]) for entry in os.scandir(directory)
                 if entry.name.endswith(".jsonl")]
    except FileNotFoundError:
        return []
    return [item_id for _, item_id in sorted(found)]
