"""Per-item training figures, ``metrics/ID.jsonl``: one JSON object per optimizer step, and
lines with a "kind" ("eval": the item's held-out evaluation at its end).

The engine appends them whole or not at all (``fsutil.append_line``); a crash or a disk
filled before that rule could still have left a torn line. Read here without torch, the way
the event log is read: a line that does not parse is skipped and counted, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson

from trainer.spool.layout import Layout


@dataclass
class MetricsLog:
    """The step records of one item, in the order written, and how many lines were unreadable."""

    steps: list[dict] = field(default_factory=list)
    unreadable_lines: int = 0
    evals: list[dict] = field(default_factory=list)  # "kind": "eval" lines (held-out evaluations)


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
        if isinstance(record, dict) and "kind" in record:
            if record["kind"] == "eval":
                log.evals.append(record)
            continue  # a kind this reader does not know (a later release's): not a step
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            log.steps.append(record)
        else:
            log.unreadable_lines += 1
    return log
