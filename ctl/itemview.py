"""Items as people read them: ``list``'s table and ``show``'s block.

The facts come from three places read here without torch: the item's metadata, the event
log (when it trained: claimed until done, failed or put back) and the tail of its metrics
file (the last loss; evaluation lines, ``"kind": "eval"``). A line of a kind this module does
not know is skipped.
"""

from __future__ import annotations

import os
from datetime import datetime

import orjson

from ctl.render import display, duration, event_line, size
from ctl.style import paint
from trainer.ids import id_time
from trainer.spool import metrics
from trainer.spool.item import Item
from trainer.spool.layout import Layout
from trainer.timefmt import parse_iso

TAIL_BYTES = 16 << 10  # the last steps' lines; the final loss is in the last one
STATE_ROLE = {"active": "good", "failed": "bad", "held": "warn", "done": "dim"}
ENDS_A_RUN = {"done", "failed", "requeued", "skipped"}


def trained_seconds(history: list[dict], now: datetime) -> dict[str, float]:
    """Seconds each item spent claimed (training), summed over its runs, from its events;
    a run still going counts up to ``now``."""
    started: dict[str, datetime] = {}
    total: dict[str, float] = {}
    for event in history:
        item_id, kind = event.get("id"), event.get("event")
        try:
            at = parse_iso(event["t"])
        except (KeyError, TypeError, ValueError):
            continue
        if kind == "claimed":
            started[item_id] = at
        elif kind in ENDS_A_RUN and item_id in started:
            total[item_id] = total.get(item_id, 0.0) + max(0.0, (at - started.pop(item_id)).total_seconds())
    for item_id, at in started.items():
        total[item_id] = total.get(item_id, 0.0) + max(0.0, (now - at).total_seconds())
    return total


def metrics_tail(layout: Layout, item_id: str) -> dict:
    """The last step line and the eval lines among the file's last ``TAIL_BYTES``:
    {"last": {...} | None, "evals": [...]} (empty where there is no file)."""
    path = metrics.path(layout, item_id)
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, end - TAIL_BYTES))
            raw = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return {"last": None, "evals": []}
    last, evals = None, []
    for line in raw.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # torn, or cut in half by the tail
        if not isinstance(record, dict):
            continue
        kind = record.get("kind")
        if kind is None and isinstance(record.get("step"), int):
            last = record
        elif kind == "eval":
            evals.append(record)
    return {"last": last, "evals": evals}


def final_loss(step: dict | None) -> float | None:
    if not step:
        return None
    for key in ("smoothed_loss", "loss"):
        if isinstance(step.get(key), (int, float)):
            return float(step[key])
    return None


def progress_text(item: Item, active_progress: dict | None) -> str:
    if item.state.value == "done":
        return "100%"
    if active_progress and active_progress.get("id") == item.id and active_progress.get("percent") is not None:
        return f"{active_progress['percent']:.0f}%"
    return "-"


def table(items: list[Item], *, shorts: dict[str, str], trained: dict[str, float], tails: dict[str, dict],
          active_progress: dict | None, now: datetime, colour: bool, full_ids: bool) -> list[str]:
    """``trainctl list``: one row per item, the name last (it may be long)."""
    rows = [("ID", "STATE", "PRIO", "TRIES", "RECORDS", "SIZE", "AGE", "TRAINED", "PROGRESS", "LOSS", "NAME")]
    roles = [None]
    for item in items:
        meta, state = item.meta, item.state.value
        loss = final_loss(tails.get(item.id, {}).get("last"))
        name = (display(meta.name) + (f"  [{meta.last_error.message}]" if state == "failed" and meta.last_error else "")
                if meta else f"({item.meta_problem})")
        rows.append((
            item.id if full_ids else shorts.get(item.id, item.id), state,
            item.priority.value if item.priority else "-",
            str(meta.attempts) if meta else "?", f"{meta.records:,}" if meta else "?",
            size(meta.size) if meta else "?",
            duration((now - id_time(item.id)).total_seconds()),
            duration(trained[item.id]) if item.id in trained else "-",
            progress_text(item, active_progress),
            f"{loss:.4f}" if loss is not None else "-",
            name,
        ))
        roles.append(STATE_ROLE.get(state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for n, (row, role) in enumerate(zip(rows, roles)):
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths)]
        if n == 0:
            lines.append(paint("  ".join(cells) + "  " + row[-1], "head", colour))
            continue
        cells[1] = paint(cells[1], role, colour) if role else cells[1]
        lines.append("  ".join(cells) + "  " + row[-1])
    return lines


def _numbers(data: dict) -> str:
    parts = []
    for key, value in data.items():
        if isinstance(value, float):
            value = f"{value:,.4g}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        parts.append(f"{key.replace('_', ' ')} {value}")
    return ", ".join(parts)


def block(item: dict, history: list[dict], *, short: str, tail: dict, trained: float | None,
          metrics_path: str, now: datetime, colour: bool) -> list[str]:
    """``trainctl show``: the item as labelled lines (no raw dicts), then its events."""
    def row(label: str, value: object) -> None:
        lines.append(f"{label:<12}{value}")

    lines: list[str] = []
    row("id", f"{item['id']}  (short: {short})")
    state = item["state"] + (f", {item['priority']} priority" if item.get("priority") else "")
    row("state", paint(state, STATE_ROLE.get(item["state"]) or "head", colour))
    if item.get("problem"):
        row("problem", item["problem"])
    if item.get("name") is not None:
        row("name", f"{display(item['name'])}  (via {item.get('source')})")
        row("data", f"{item['records']:,} records, {size(item['size'])} ({item['size']:,} bytes)")
        row("sha256", item["sha256"])
        enqueued = item.get("enqueued_at")
        try:
            ago = f" ({duration((now - parse_iso(enqueued)).total_seconds())} ago)"
        except (TypeError, ValueError):
            ago = ""
        row("enqueued", f"{enqueued}{ago}")
        row("attempts", item.get("attempts"))
        if item.get("not_before"):
            row("retry at", item["not_before"])
    if trained is not None:
        row("trained", duration(trained))
    last = tail.get("last")
    if last:
        loss = final_loss(last)
        steps = f"step {last.get('step')}/{last.get('total')}, global step {last.get('global_step')}"
        row("final loss" if item["state"] == "done" else "last loss",
            (f"{loss:.4f}  " if loss is not None else "") + f"({steps})")
    tokens = item.get("tokens")
    if isinstance(tokens, dict) and tokens:
        row("tokens", _numbers(tokens))
    for result in tail.get("evals") or []:
        figures = {k.removeprefix("eval_"): v for k, v in result.items()
                   if k.startswith("eval_") or k == "tokens"}
        row("eval", f"{result.get('set', '?')} at step {result.get('step')}: {_numbers(figures)}")
    row("metrics", metrics_path + ("" if last or tail.get("evals") else "  (none yet)"))
    row("path", item["path"])
    for error in item.get("errors") or []:
        row("error", f"{error['at']}  [{error['kind']}, attempt {error['attempt']}] {error['message']}")
    for event in history:
        row("event", event_line(event, with_id=False))
    return lines


def list_lines(layout: Layout, items: list[Item], *, now: datetime, colour: bool, full_ids: bool) -> list[str]:
    """Gather what ``table`` shows: short ids (directory listings only), training time from the
    events of the items that have left pending, loss tails, and the active item's progress."""
    from trainer.spool import control, events
    from trainer.spool.names import all_ids, short_forms
    from trainer.spool.status import item_progress

    shorts = short_forms(all_ids(layout)) if not full_ids else {}
    started = [item for item in items if item.state.value != "pending"]
    trained: dict[str, float] = {}
    if started:
        since = min(id_time(item.id) for item in started)
        wanted = {item.id for item in started}
        log = events.read(layout, since=since).events
        trained = {k: v for k, v in trained_seconds(log, now).items() if k in wanted}
    tails = {item.id: metrics_tail(layout, item.id) for item in started}
    state, _ = control.read_state(layout)
    active = item_progress(state, None) if any(item.state.value == "active" for item in items) else None
    return table(items, shorts=shorts, trained=trained, tails=tails, active_progress=active, now=now,
                 colour=colour, full_ids=full_ids)
