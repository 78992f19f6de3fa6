"""The report from a base dir to a page, and the page to a file (whole or not at all)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from trainer import clock
from trainer.config import Config
from trainer.report import collect, curves, figures, page, sections
from trainer.spool.fsutil import write_atomic
from trainer.spool.layout import Layout

RECENT_ITEM_CHARTS = 6
# The life chart draws the items' whole curves (read again) when they are this few and this
# small; beyond, each item's reduction kept in the cache (curves.py): the cost stays bounded.
FULL_CURVE_ITEMS = 50
FULL_CURVE_BYTES = 32 << 20
PAGE_MODE = 0o640  # the daemon's group may read it (served or copied by any member), others not


def _recent_item_ids(data: dict, summaries: dict) -> list[tuple[str, str | None]]:
    """The active item, then the most recently done ones that have metrics."""
    chosen = []
    item = data["status"].get("item")
    if isinstance(item, dict) and item.get("id") in summaries:
        chosen.append((item["id"], item.get("name")))
    for row in reversed(data["queues"]["done"]["rows"]):
        if len(chosen) >= RECENT_ITEM_CHARTS:
            break
        if row["id"] in summaries and row["id"] not in {c for c, _ in chosen}:
            chosen.append((row["id"], row.get("name")))
    return chosen


def _charts(layout: Layout, data: dict, since: datetime | None, summaries: dict) -> tuple:
    """The life chart and the per-item charts."""
    read: dict[str, curves.ItemCurve] = {}

    def curve(item_id: str) -> curves.ItemCurve:
        if item_id not in read:
            read[item_id] = curves.read_curve(layout, item_id)
        return read[item_id]

    item_charts = [figures.item(f"{item_id} {name or ''}".rstrip(), curve(item_id))
                   for item_id, name in _recent_item_ids(data, summaries)]
    shown = figures.in_range(summaries, since)
    if len(shown) <= FULL_CURVE_ITEMS and sum(_file_size(s) for _, s in shown) <= FULL_CURVE_BYTES:
        for item_id, _ in shown:
            curve(item_id)
    return figures.life(summaries, since, read), item_charts


def render(layout: Layout, config: Config, *, since: datetime | None = None,
           now: clock.Reading | None = None, use_cache: bool = True) -> str:
    """The page's HTML. Updates ``run/report-cache.json`` where it can (``curves``)."""
    reading = now or clock.read()
    data = collect.collect(layout, config, since=since, now=reading)
    cache = curves.load_cache(layout) if use_cache else {"items": {}}
    summaries, items_changed = curves.summaries(layout, cache["items"])
    disk_use, disk_changed = collect.disk_use_cached(layout, cache.get("disk_use"), reading)
    if use_cache and (items_changed or disk_changed):
        curves.save_cache(layout, {"items": summaries, "disk_use": disk_use})
    life, item_charts = _charts(layout, data, since, summaries)
    status = data["status"]
    since_note = f" \u00b7 since {page.text(data['since'])}" if data["since"] else ""
    header = (f"<h1>trainer report</h1><p class=\"muted\">{page.text(str(layout.root))} \u00b7 generated "
              f"{page.text(data['generated_at'])}{since_note}</p>")
    body = "".join([
        header,
        sections.daemon(status),
        sections.current_item(status),
        sections.curves(life, item_charts),
        sections.queue(data["queues"]),
        sections.failures(data["queues"], data["history"]),
        sections.versions(data["versions"]),
        sections.disk(status, disk_use),
        sections.recent(data["history"]),
    ])
    return page.document("trainer report", body)


def _file_size(summary: dict) -> int:
    key = summary.get("key")
    return key[0] if isinstance(key, list) and key and isinstance(key[0], int) else FULL_CURVE_BYTES + 1


def default_path(layout: Layout) -> Path:
    return layout.report_page


def write(layout: Layout, html: str, dest: Path) -> None:
    """Publish the page at ``dest`` atomically: staged in the base dir's ``tmp/`` when it goes
    into the base dir, else beside ``dest`` (a rename never crosses filesystems)."""
    dest = Path(os.path.abspath(dest))
    staging = layout.tmp if dest.parent == layout.root else dest.parent
    write_atomic(staging, dest, html.encode("utf-8", "surrogateescape"), mode=PAGE_MODE)
