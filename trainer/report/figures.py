"""The report's charts, built from the curves and the versions (data in, ``charts.Chart`` out)."""

from __future__ import annotations

import math
from datetime import datetime

from trainer.report.charts import Chart, Marker, Series
from trainer.report.curves import ItemCurve
from trainer.report.downsample import minmax
from trainer.timefmt import parse_iso

LIFE_BUCKETS = 800  # ~ one per pixel column of the chart's plot area
ITEM_CHART_BUCKETS = 300
MAX_MARKERS = 200  # item starts drawn on the life chart; more would be a solid band
LOSS, EVAL = "#1f77b4", "#d62728"
SET_COLORS = ("#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def _recent_enough(summary: dict, since: datetime | None) -> bool:
    if since is None:
        return True
    try:
        return parse_iso(summary.get("t_last")) >= since
    except (TypeError, ValueError):
        return False


def in_range(summaries: dict, since: datetime | None) -> list[tuple[str, dict]]:
    """The items the life chart shows, in training order."""
    return sorted(((item_id, s) for item_id, s in summaries.items()
                   if isinstance(s.get("first"), (int, float)) and _recent_enough(s, since)),
                  key=lambda pair: pair[1]["first"])


def life(summaries: dict, since: datetime | None, full: dict[str, ItemCurve] | None = None) -> Chart:
    """Loss over the model's life: global step on x, every item's curve (``full``: read whole,
    else its reduction from the cache), item starts marked, holdout evaluations as dots."""
    chosen = in_range(summaries, since)
    full = full or {}
    points: list[tuple[float, float]] = []
    evals: list[tuple[float, float]] = []
    for item_id, s in chosen:
        points.extend(full[item_id].steps if item_id in full else _pairs(s.get("points")))
        evals.extend(_pairs(s.get("evals")))
    points.sort()  # nearly sorted already (items in training order): a redone step can repeat one
    evals.sort()
    step = max(1, math.ceil(len(chosen) / MAX_MARKERS))
    markers = [Marker(s["first"], f"{item_id} {s.get('name') or ''}".rstrip()) for item_id, s in chosen[::step]]
    series = [Series("training loss", LOSS, minmax(points, LIFE_BUCKETS))]
    if evals:
        series.append(Series("holdout eval loss", EVAL, minmax(evals, LIFE_BUCKETS // 2), dots=True))
    title = "Loss over the model's life" + (f" ({len(chosen):,} items)" if chosen else "")
    return Chart(title, "global step (a dashed line marks each item's start)", "loss (min and max per column)",
                 series, markers)


_NUMBERS = (int, float)


def _pairs(value: object) -> list[tuple[float, float]]:
    """[x, y] pairs from the cache (anyone in the group could have damaged it: checked, cheaply,
    since a year holds hundreds of thousands)."""
    if not isinstance(value, list):
        return []
    return [(p[0], p[1]) for p in value
            if type(p) is list and len(p) == 2 and type(p[0]) in _NUMBERS and type(p[1]) in _NUMBERS]


def item(title: str, curve: ItemCurve) -> Chart:
    series = [Series("training loss", LOSS, minmax(sorted(curve.local), ITEM_CHART_BUCKETS))]
    return Chart(title, "step within the item", "loss", series, width=440, height=220)


def eval_by_version(versions: list[dict]) -> Chart | None:
    """Each evaluation set's loss per version (published and held back), or None if no version
    has any."""
    ticks, by_set = [], {}
    for index, version in enumerate(versions):
        ticks.append((float(index), version["name"] + ("*" if version["where"] == "candidate" else "")))
        for set_name, result in eval_sets(version["meta"]).items():
            loss = result.get("loss")
            if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss):
                by_set.setdefault(set_name, []).append((float(index), float(loss)))
    if not by_set:
        return None
    series = [Series(name, SET_COLORS[i % len(SET_COLORS)], points, dots=len(points) == 1)
              for i, (name, points) in enumerate(sorted(by_set.items()))]
    return Chart("Evaluation loss per version (* held back by the gate)", "version", "eval loss", series,
                 x_ticks=ticks)


def eval_sets(meta: dict) -> dict:
    evaluation = meta.get("eval")
    sets = evaluation.get("sets") if isinstance(evaluation, dict) else None
    if not isinstance(sets, dict):
        return {}
    return {str(name): result for name, result in sets.items() if isinstance(result, dict)}
