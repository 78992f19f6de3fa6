"""A base dir with a history, made quickly without the daemon: items written as the spool
writes them (``ItemMeta``, one directory per item in its state's directory), per-item
metrics, monthly event segments spread over the months given, versions with the metadata
the evaluation and lineage features write (``eval``, ``lineage``, ``parent``) and a
held-back candidate. For the report's tests (a few items) and bench/bench_report.py (a year,
10,000 items)."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

from trainer.ids import new_id
from trainer.spool import control, events
from trainer.spool.item import ItemError, ItemMeta
from trainer.spool.layout import Layout
from trainer.states import ItemState, Priority
from trainer.timefmt import iso

SPIKE = 50.0  # one step's loss far above the rest: the downsampled chart must still show it


def _meta(item_id: str, name: str, priority: Priority, at: datetime, errors=()) -> ItemMeta:
    return ItemMeta(id=item_id, name=name, source="enqueue", sha256="ab" * 32, size=1234, records=20,
                    enqueued_at=iso(at), priority=priority, errors=tuple(errors))


def _storable(name: str) -> str:
    """A name as meta.json can hold it: bytes that are not UTF-8 as escapes (the intake does
    that much); control characters and bidi overrides stay raw, as a hand-edited file could
    hold them, for the page to escape."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _write_item(layout: Layout, directory: Path, meta: ItemMeta) -> None:
    path = directory / meta.id
    path.mkdir(parents=True)
    (path / "data.jsonl").write_bytes(b'{"text": "x"}\n')
    (path / "meta.json").write_bytes(meta.to_json())


def _metrics(layout: Layout, item_id: str, first_step: int, steps: int, at: datetime, rng: random.Random,
             spike: bool) -> None:
    lines = []
    for step in range(1, steps + 1):
        loss = 2.0 + 3.0 * math.exp(-(first_step + step) / 2000) + rng.random() * 0.2
        if spike and step == steps // 2:
            loss = SPIKE
        record = {"t": iso(at + timedelta(seconds=step)), "item_id": item_id, "step": step, "total": steps,
                  "global_step": first_step + step, "loss": loss, "smoothed_loss": loss, "lr": 1e-4,
                  "grad_norm": 1.0, "tokens": 2000, "tokens_per_s": 9000.0, "seconds_per_step": 0.2,
                  "skipped": False, "checkpointed": step == steps}
        lines.append(orjson.dumps(record))
    lines.append(orjson.dumps({"kind": "eval", "set": "holdout", "step": first_step + steps,
                               "eval_loss": 2.5 + rng.random() * 0.1, "eval_perplexity": 12.0,
                               "eval_token_accuracy": 0.4, "tokens": 500}))
    lines.append(b'{"kind": "a-kind-from-a-later-release", "step": 1}')
    (layout.root / "metrics").mkdir(exist_ok=True)
    (layout.root / "metrics" / f"{item_id}.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def _write_events(layout: Layout, records: list[dict]) -> None:
    by_month: dict[str, list[bytes]] = {}
    for record in records:
        by_month.setdefault(record["t"][:7], []).append(orjson.dumps(record))
    for month, lines in by_month.items():
        with open(layout.events_dir / events.segment_name(month), "ab") as fh:
            fh.write(b"\n".join(lines) + b"\n")


def build(layout: Layout, *, done: int, pending: int, failed: int, steps: int, days: float,
          names: list[str] | None = None, reasons: list[str] | None = None, versions: int = 3,
          seed: int = 0) -> dict:
    """Fill ``layout`` with a history of ``days`` days ending now; returns the ids by state.

    ``names`` and ``reasons`` (cycled) name the items and the failures: hostile ones for
    the escaping tests."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    start = now - timedelta(days=days)
    total = done + pending + failed
    names = names or ["data-{n}.jsonl"]
    reasons = reasons or ["CUDA out of memory at step {n}"]
    ids: dict[str, list[str]] = {"done": [], "pending": [], "failed": []}
    log: list[dict] = []
    global_step = 0
    for n in range(total):
        at = start + timedelta(seconds=(now - start).total_seconds() * n / max(1, total))
        item_id = new_id(int(at.timestamp() * 1e9))
        name = _storable(names[n % len(names)].replace("{n}", str(n)))
        state = "done" if n < done else "failed" if n < done + failed else "pending"
        priority = (Priority.HIGH, Priority.NORMAL, Priority.LOW)[n % 3]
        log.append({"t": iso(at), "event": "enqueued", "id": item_id, "name": name, "priority": priority.value})
        if state == "done":
            _write_item(layout, layout.state_dir(ItemState.DONE), _meta(item_id, name, priority, at))
            _metrics(layout, item_id, global_step, steps, at, rng, spike=n == done // 2)
            global_step += steps
            log += [{"t": iso(at + timedelta(seconds=1)), "event": "claimed", "id": item_id},
                    {"t": iso(at + timedelta(seconds=steps)), "event": "done", "id": item_id, "steps": steps,
                     "global_step": global_step}]
        elif state == "failed":
            reason = reasons[n % len(reasons)].replace("{n}", str(n))
            error = ItemError(at=iso(at), message=reason, kind="permanent", attempt=1)
            _write_item(layout, layout.state_dir(ItemState.FAILED), _meta(item_id, name, priority, at, [error]))
            log.append({"t": iso(at + timedelta(seconds=2)), "event": "failed", "id": item_id, "reason": reason,
                        "kind": "permanent"})
        else:
            _write_item(layout, layout.pending(priority), _meta(item_id, name, priority, at))
        ids[state].append(item_id)
    _write_events(layout, log)
    _versions(layout, ids["done"], names, global_step, versions, rng)
    control.write_state(layout, control.daemon_state("idle", pid=1, started_at=start, now=now))
    return ids


def _versions(layout: Layout, done: list[str], names: list[str], last_step: int, count: int,
              rng: random.Random) -> None:
    models = layout.root / "models"
    per = max(1, len(done) // max(1, count))
    parent = "base"
    for v in range(1, count + 2):
        candidate = v == count + 1  # the last one was held back by the gate
        name = f"v{v:03d}"
        directory = (models / ".candidates" / name) if candidate else (models / name)
        directory.mkdir(parents=True)
        chunk = done[(v - 1) * per:v * per] or done[-1:]
        items = [{"id": i, "name": _storable(names[k % len(names)].replace("{n}", str(k))), "sha256": "cd" * 32,
                  "records": 20, "tokens": 4000, "first_step": k, "last_step": k + 1} for k, i in enumerate(chunk)]
        loss = 3.0 - 0.2 * v + (0.8 if candidate else 0.0)
        meta = {"created_at": iso(datetime.now(timezone.utc)), "global_step": last_step * v // (count + 1),
                "items_completed": len(chunk) * v, "kind": "consolidated", "version": name, "parent": parent,
                "lineage": {"base": "models/base", "config_hash": "ef" * 32, "steps": [0, last_step], "items": items},
                "eval": {"sets": {"holdout": {"loss": loss, "perplexity": math.exp(loss), "token_accuracy": 0.4,
                                              "tokens": 5000, "records": 50, "sha256": "01" * 32},
                                  _storable(names[v % len(names)].replace("{n}", "set")): {"loss": loss + 0.3,
                                                                                "perplexity": 1.0}},
                         "samples": [{"prompt": "hi", "output": "hello"}],
                         "gate": {"passed": not candidate,
                                  "reason": "holdout loss rose 27% over v002 (tolerance 5%)" if candidate else None,
                                  "compared_with": parent, "tolerance": 0.05}}}
        (directory / "trainer_version.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        (directory / "model.safetensors").write_bytes(b"\0" * 4096)
        if not candidate:
            parent = name
    (models / "LATEST").write_text(parent + "\n")
