"""Fewer points that draw the same line: min/max per bucket, so that spikes survive.

A year of training is millions of optimizer steps; a chart is ~1,000 pixels wide. The x range
is cut into ``buckets`` equal slices (a slice per pixel column or so) and each slice keeps
two points: its lowest and its highest, in the order they occurred. A line through those
points covers, in every column, exactly the vertical extent the full line covers there,
so a single spike among a million points is still drawn at its full height (an average
would flatten it; keeping every n-th point would drop it). At most ``2 * buckets`` points
come out, whatever goes in.

The same reduction is applied twice for the model's whole life: once per item, to a few
buckets over the item's own steps (``ITEM_BUCKETS``, kept in the report's cache), then
over all items to the chart's width. The min and max of mins and maxes are the true min
and max of each column, so nothing is lost but horizontal position within one item bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

Point = tuple[float, float]

_NUMBERS = (int, float)  # exact types: a bool is not a loss
ITEM_BUCKETS = 8  # per item, in the cache: 10,000 items stay ~2 MB and a page renders in ~1 s


def minmax(points: Iterable[Point], buckets: int, x_range: tuple[float, float] | None = None) -> list[Point]:
    """At most two points (the lowest and the highest, in their order) per equal-width x bucket.

    Points must come in x order; those with a y that is not a finite number are dropped (a
    non-finite loss is a skipped step, not a value to draw). ``x_range``: the bucket grid's
    extent (default: the points' own first and last x).
    """
    finite = [p for p in points if type(p[1]) in _NUMBERS and math.isfinite(p[1])]
    if len(finite) <= 2 * buckets or buckets <= 0:
        return finite
    low, high = x_range if x_range is not None else (finite[0][0], finite[-1][0])
    width = (high - low) / buckets or 1.0
    out: list[Point] = []
    current = None
    lowest = highest = None
    for x, y in finite:
        bucket = min(buckets - 1, max(0, int((x - low) / width)))
        if bucket != current:
            _flush(out, lowest, highest)
            current, lowest, highest = bucket, (x, y), (x, y)
            continue
        if y < lowest[1]:
            lowest = (x, y)
        if y > highest[1]:
            highest = (x, y)
    _flush(out, lowest, highest)
    return out


def _flush(out: list[Point], lowest: Point | None, highest: Point | None) -> None:
    if lowest is None:
        return
    if lowest == highest:
        out.append(lowest)
    else:
        out.extend(sorted((lowest, highest)))  # in x order: the line runs forward
