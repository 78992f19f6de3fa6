"""The loss curves: each item's ``metrics/ID.jsonl`` reduced once, and kept in a cache.

A step line has no ``kind`` key (``{"step", "global_step", "loss", ...}``); an evaluation
line has ``"kind": "eval"`` (``{"set", "step", "eval_loss", ...}``); a line of a kind not
known here, or one that does not parse, is skipped.

Reading every metrics file of a year (millions of lines) at every report would take
minutes, so each item's file is reduced once to a summary (its global step range,
``downsample.ITEM_BUCKETS`` min/max buckets of its loss, its evaluations, its name) kept in
``run/report-cache.json`` under the file's size and mtime: a report reads only the files
that changed since the last one (the active item's). The cache is display-only: lost,
unreadable or unwritable, it is rebuilt or skipped, never an error.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from trainer.ids import is_id
from trainer.report.downsample import ITEM_BUCKETS, minmax
from trainer.spool import queue
from trainer.spool.fsutil import read_regular, write_atomic
from trainer.spool.layout import Layout

CACHE_VERSION = 1
CACHE_LIMIT = 1 << 30  # far above 10,000 items' ~5 MB; a fifo or device in its place is never read


@dataclass
class ItemCurve:
    """One item's metrics as read in full: loss by global step, and its evaluations."""

    steps: list[tuple[float, float]] = field(default_factory=list)  # (global_step, loss)
    local: list[tuple[float, float]] = field(default_factory=list)  # (step within the item, loss)
    evals: list[tuple[float, float]] = field(default_factory=list)  # (global step, eval_loss)
    last_time: str | None = None
    last_smoothed: float | None = None


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def parse_lines(raw: bytes) -> ItemCurve:
    curve = ItemCurve()
    for line in raw.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        kind = record.get("kind")
        if kind is None:
            x, y, local = _number(record.get("global_step")), _number(record.get("loss")), _number(record.get("step"))
            if x is not None and y is not None:
                curve.steps.append((x, y))
                if local is not None:
                    curve.local.append((local, y))
            smoothed = _number(record.get("smoothed_loss"))
            if smoothed is not None:
                curve.last_smoothed = smoothed
        elif kind == "eval":
            x, y = _number(record.get("step")), _number(record.get("eval_loss"))
            if x is not None and y is not None:
                curve.evals.append((x, y))
        else:
            continue  # a kind this release does not know
        if isinstance(record.get("t"), str):
            curve.last_time = record["t"]
    return curve


def metrics_dir(layout: Layout) -> Path:
    return layout.root / "metrics"


def read_curve(layout: Layout, item_id: str) -> ItemCurve:
    """Never follows a symlink or waits on a fifo put in the file's place (group members can)."""
    try:
        fd = os.open(metrics_dir(layout) / f"{item_id}.jsonl", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ItemCurve()
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ItemCurve()
        try:
            return parse_lines(fh.read())
        except OSError:
            return ItemCurve()


def _compact(point: tuple[float, float]) -> list:
    """A point as the cache keeps it: the step as an integer, the loss to 5 significant digits
    (a pixel is ~1/200 of the axis), so 10,000 items load in a fraction of a second."""
    x, y = point
    return [int(x) if float(x).is_integer() else x, float(f"{y:.5g}")]


def summarize(curve: ItemCurve, name: str | None) -> dict:
    """What the cache keeps of an item: small whatever the item's length."""
    ordered = sorted(curve.steps)
    return {
        "name": name,
        "first": ordered[0][0] if ordered else None,
        "last": ordered[-1][0] if ordered else None,
        "steps": len(ordered),
        "t_last": curve.last_time,
        "final_loss": curve.last_smoothed,
        "points": [_compact(p) for p in minmax(ordered, ITEM_BUCKETS)],
        "evals": [_compact(p) for p in curve.evals],
    }


def cache_path(layout: Layout) -> Path:
    return layout.report_cache


def load_cache(layout: Layout) -> dict:
    """The cache: ``items`` (id -> summary) and ``disk_use`` (see ``collect.disk_use_cached``);
    empty if missing, damaged or of another version."""
    try:
        data = orjson.loads(read_regular(cache_path(layout), CACHE_LIMIT))
    except (OSError, orjson.JSONDecodeError):
        return {"items": {}}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("items"), dict):
        return {"items": {}}
    return data


def save_cache(layout: Layout, cache: dict) -> None:
    """Display-only: a refused write (full disk, no permission) leaves the old cache."""
    with contextlib.suppress(OSError):
        write_atomic(layout.tmp, cache_path(layout), orjson.dumps({**cache, "version": CACHE_VERSION}),
                     durable=False)


def _item_name(layout: Layout, item_id: str) -> str | None:
    try:
        item = queue.find(layout, item_id)
    except Exception:  # noqa: BLE001  (removed, damaged: the curve is still shown, by id)
        return None
    return item.meta.name if item.meta else None


def summaries(layout: Layout, cache: dict) -> tuple[dict, bool]:
    """Every item's summary, from the cache where its metrics file is unchanged; and whether
    anything changed (the cache is then worth writing back)."""
    fresh: dict = {}
    changed = False
    try:
        entries = list(os.scandir(metrics_dir(layout)))
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        item_id = entry.name.removesuffix(".jsonl")
        if not entry.name.endswith(".jsonl") or not is_id(item_id):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        key = [st.st_size, st.st_mtime_ns]
        known = cache.get(item_id)
        if isinstance(known, dict) and known.get("key") == key:
            fresh[item_id] = known
            continue
        name = known.get("name") if isinstance(known, dict) else None
        fresh[item_id] = {"key": key, **summarize(read_curve(layout, item_id), name or _item_name(layout, item_id))}
        changed = True
    return fresh, changed or len(fresh) != len(cache)
