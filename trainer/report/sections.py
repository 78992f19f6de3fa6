"""The report's sections, one function each: collected data in, escaped markup out."""

from __future__ import annotations

from trainer.report import figures
from trainer.report.page import chart, duration, more, section, size, table, text

NUMERIC_EVAL_KEYS = ("loss", "perplexity", "token_accuracy", "tokens", "records")
LINEAGE_ROWS = 50  # items listed per version (all of them are in its trainer_version.json)


def daemon(status: dict) -> str:
    d = status.get("daemon") or {}
    live = d.get("liveness")
    cls = "ok" if live == "running" else "bad"
    rows = [["liveness", f'<span class="{cls}">{text(live)}</span>'],
            ["state", text(d.get("state") or (f"last said {d['last_state']}" if d.get("last_state") else None))],
            ["reason", text(d.get("reason") or d.get("state_problem"))],
            ["pid", text(d.get("pid"))],
            ["heartbeat age", duration(d.get("heartbeat_age_s"))],
            ["paused", text(status.get("pause_reason") or "yes") if status.get("paused") else "no"],
            ["requests pending", text(", ".join(status.get("requests") or []) or None)],
            ["last checkpoint", text(_checkpoint(status.get("last_checkpoint")))],
            ["last error", f'<span class="bad">{text(status["last_error"])}</span>' if status.get("last_error")
             else text(None)]]
    return section("daemon", "Daemon", table(["", ""], rows))


def _checkpoint(checkpoint: object) -> str | None:
    if not isinstance(checkpoint, dict):
        return None
    return f"step {checkpoint.get('step')} ({checkpoint.get('name')})"


def current_item(status: dict) -> str:
    item = status.get("item")
    if not isinstance(item, dict):
        return section("current", "Current item", '<p class="muted">nothing is training</p>')
    percent = item.get("percent")
    bar = ""
    if isinstance(percent, (int, float)):
        bar = f'<span class="bar"><span style="width:{max(0.0, min(100.0, float(percent))):.1f}%"></span></span> '
    rows = [["item", f"{text(item.get('id'))} {text(item.get('name'))}"],
            ["progress", f"{bar}step {text(item.get('step'))} of {text(item.get('total'))} ({text(percent)}%)"],
            ["ETA", text(duration(item.get("eta_s")) if item.get("eta_s") is not None else None)],
            ["loss (smoothed)", text(item.get("loss"))],
            ["tokens/s", text(item.get("tokens_per_s"))],
            ["global step", text(item.get("global_step"))]]
    return section("current", "Current item", table(["", ""], rows))


def curves(life_chart, item_charts: list) -> str:
    grid = "".join(f"<figure><figcaption>{text(c.title)}</figcaption>{chart(c)}</figure>" for c in item_charts)
    per_item = f"<h3>Per item (the active one and the last done)</h3><div class=\"grid2\">{grid}</div>" if grid else ""
    return section("loss", "Loss", chart(life_chart) + per_item)


def _item_rows(rows: list[dict], with_error: bool = False) -> list[list[str]]:
    out = []
    for r in rows:
        row = [text(r["id"]), text(r.get("name")), text(r.get("records")), size(r.get("size")),
               text(r.get("attempts")), text(r.get("enqueued_at"))]
        if with_error:
            row.append(text(r.get("last_error") or r.get("problem")))
        out.append(row)
    return out


HEADERS = ["id", "name", "records", "size", "attempts", "enqueued"]


def queue(queues: dict) -> str:
    parts = []
    for priority in ("high", "normal", "low"):
        q = queues.get(priority) or {"total": 0, "rows": []}
        parts.append(f"<h3>{priority} ({q['total']:,} pending)</h3>")
        if q["rows"]:
            parts.append(table(HEADERS, _item_rows(q["rows"]), {2, 4}, cls="queue")
                         + more(q["total"], len(q["rows"])))
    held = queues.get("held") or {"total": 0, "rows": []}
    parts.append(f"<h3>held ({held['total']:,})</h3>")
    if held["rows"]:
        parts.append(table(HEADERS, _item_rows(held["rows"]), {2, 4}) + more(held["total"], len(held["rows"])))
    done = queues.get("done") or {"total": 0, "rows": []}
    parts.append(f"<h3>done ({done['total']:,}; the last {len(done['rows']):,})</h3>")
    if done["rows"]:
        parts.append(table(HEADERS, _item_rows(list(reversed(done["rows"]))), {2, 4}, cls="done"))
    return section("queue", "Queue by priority", "".join(parts))


def failures(queues: dict, history: dict) -> str:
    failed = queues.get("failed") or {"total": 0, "rows": []}
    parts = [f"<h3>failed items ({failed['total']:,})</h3>"]
    if failed["rows"]:
        parts.append(table([*HEADERS, "last error"], _item_rows(list(reversed(failed["rows"])), True), {2, 4},
                           cls="failed"))
    shown = history["failures"]
    parts.append(f"<h3>failure events since {text(history['failure_since'])} ({history['failure_total']:,}; "
                 f"the last {len(shown):,})</h3>")
    rows = [[text(e.get("t")), text(e.get("event")), text(e.get("id")), text(e.get("kind")),
             text(e.get("reason") or e.get("message"))] for e in reversed(shown)]
    if rows:
        parts.append(table(["time", "event", "item", "kind", "reason"], rows, cls="failures"))
    return section("failures", "Recent failures", "".join(parts))


def versions(found: list[dict]) -> str:
    if not found:
        return section("versions", "Versions", '<p class="muted">no version published yet</p>')
    rows = []
    for v in found:
        meta = v["meta"]
        gate = (meta.get("eval") or {}).get("gate") if isinstance(meta.get("eval"), dict) else None
        rows.append([text(v["name"]) + (" (LATEST)" if v["latest"] else ""),
                     text("held back" if v["where"] == "candidate" else "published"),
                     text(meta.get("created_at")), text(meta.get("global_step")), text(meta.get("items_completed")),
                     text(meta.get("parent")), text(meta.get("smoothed_loss")), _gate(gate), text(v["problem"])])
    body = table(["version", "where", "created", "global step", "items", "parent", "loss", "gate", "problem"],
                 rows, {3, 4, 6}, cls="versions")
    return section("versions", "Versions", body + _evaluation(found) + _lineage(found))


def _gate(gate: object) -> str:
    if not isinstance(gate, dict):
        return text(None)
    passed = gate.get("passed")
    verdict = '<span class="ok">passed</span>' if passed is True else '<span class="bad">held back</span>'
    reason = f": {text(gate.get('reason'))}" if gate.get("reason") else ""
    against = f" (vs {text(gate.get('compared_with'))})" if gate.get("compared_with") else ""
    return verdict + reason + against


def _evaluation(found: list[dict]) -> str:
    rows = []
    for v in found:
        for set_name, result in sorted(figures.eval_sets(v["meta"]).items()):
            rows.append([text(v["name"]), text(set_name), *(text(result.get(k)) for k in NUMERIC_EVAL_KEYS),
                         text(result.get("sha256"))])
    if not rows:
        return '<h3>Evaluation</h3><p class="muted">no evaluation recorded for these versions</p>'
    return ("<h3>Evaluation</h3>" + table(["version", "set", *NUMERIC_EVAL_KEYS, "sha256"], rows, {2, 3, 4, 5, 6},
                                          cls="evaluation") + chart(figures.eval_by_version(found)))


def _lineage(found: list[dict]) -> str:
    parts = []
    for v in found:
        lineage = v["meta"].get("lineage")
        if not isinstance(lineage, dict):
            continue
        items = [i for i in lineage.get("items") or [] if isinstance(i, dict)]
        rows = [[text(i.get("id")), text(i.get("name")), text(i.get("records")), text(i.get("tokens")),
                 text(i.get("first_step")), text(i.get("last_step")), text(i.get("sha256"))]
                for i in items[-LINEAGE_ROWS:]]
        steps = lineage.get("steps")
        summary = (f"{text(v['name'])}: from {text(v['meta'].get('parent'))}, {len(items):,} items, steps "
                   f"{text(steps[0] if isinstance(steps, list) and steps else None)}\u2013"
                   f"{text(steps[-1] if isinstance(steps, list) and steps else None)}")
        parts.append(f"<details><summary>{summary}</summary><p>base {text(lineage.get('base'))}, config "
                     f"{text(lineage.get('config_hash'))}</p>"
                     + table(["id", "name", "records", "tokens", "first step", "last step", "sha256"], rows,
                             {2, 3, 4, 5}, cls="lineage")
                     + _more_lineage(len(items), v) + "</details>")
    if not parts:
        return '<h3>Lineage</h3><p class="muted">no lineage recorded for these versions</p>'
    return "<h3>Lineage</h3>" + "".join(parts)


def _more_lineage(total: int, version: dict) -> str:
    if total <= LINEAGE_ROWS:
        return ""
    where = "models/.candidates" if version["where"] == "candidate" else "models"
    return (f'<p class="muted">the last {LINEAGE_ROWS} of {total:,} items; every one is in '
            f'{where}/{text(version["name"])}/trainer_version.json</p>')


def disk(status: dict, use: dict) -> str:
    rows = [[text(u.get("what")), size(u.get("bytes"))] for u in use["places"] if isinstance(u, dict)]
    d = status.get("disk") or {}
    rows.append(["free on the filesystem", f"{size(d.get('free_bytes'))} of {size(d.get('total_bytes'))}"])
    note = (f'<p class="muted">measured {text(use.get("at"))} (walked again after 10 minutes); a file '
            f"hard-linked into several places is counted once, in the first</p>")
    return section("disk", "Disk use", table(["what", "on disk"], rows, {1}, cls="disk") + note)


def recent(history: dict) -> str:
    rows = []
    for e in reversed(history["events"]):
        details = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "event", "id"))
        rows.append([text(e.get("t")), text(e.get("event")), text(e.get("id")), text(details)])
    note = (f'<p class="muted">{history["unreadable_lines"]:,} unreadable line(s) skipped</p>'
            if history.get("unreadable_lines") else "")
    return section("events", "Recent events", table(["time", "event", "item", "details"], rows, cls="events") + note)
