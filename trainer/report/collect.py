"""What the report shows, read from the base dir: plain dicts and lists, no markup.

Everything is read without a lock (every state the spool can show is a complete one) and
without trusting its shape: a version's metadata written by an older release lacks the
``eval``, ``lineage`` and ``parent`` keys, a damaged file is shown as such, and nothing
here raises because of what a file holds. Long lists are cut (``QUEUE_ROWS``...) and say
how many more there are, so 10,000 items stay a page of a few MB.
"""

from __future__ import annotations

import os
import re
import stat
from datetime import datetime, timedelta
from pathlib import Path

import orjson

from trainer import clock
from trainer.config import Config
from trainer.ids import is_id
from trainer.spool import events, status
from trainer.spool.fsutil import read_regular
from trainer.spool.item import load_item
from trainer.spool.layout import Layout
from trainer.states import ItemState, Priority
from trainer.timefmt import iso, parse_iso

QUEUE_ROWS = 100  # per priority
RECENT_DONE = 100
FAILURE_ROWS = 50
EVENT_ROWS = 30
FAILURE_DAYS = 30  # failure events shown without --since
DISK_USE_MAX_AGE_S = 600  # disk use is walked again when its figures are older than this
FAILURE_EVENTS = {"failed", "rejected", "skipped", "held_back", "discarded"}
VERSION_FILE = "trainer_version.json"  # trainer.train.releases.VERSION_FILE (torch-side: not imported)
VERSION_LIMIT = 64 << 20
_VERSION = re.compile(r"v(\d{3,})")


def _ids(directory: Path) -> list[str]:
    try:
        return sorted(name for name in os.listdir(directory) if is_id(name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _row(item) -> dict:
    meta = item.meta
    last = meta.last_error if meta else None
    return {"id": item.id, "name": meta.name if meta else None, "state": item.state.value,
            "priority": item.priority.value if item.priority else None,
            "records": meta.records if meta else None, "size": meta.size if meta else None,
            "attempts": meta.attempts if meta else None, "enqueued_at": meta.enqueued_at if meta else None,
            "problem": item.meta_problem, "last_error": last.message if last else None}


def _rows(layout: Layout, directory: Path, state: ItemState, priority: Priority | None, ids: list[str]) -> list[dict]:
    rows = []
    for item_id in ids:
        try:
            rows.append(_row(load_item(directory / item_id, state, priority)))
        except FileNotFoundError:
            continue  # moved while we read
    return rows


def queues(layout: Layout) -> dict:
    """Pending items by priority in service order (the first ``QUEUE_ROWS`` of each), held
    items, and the last ``RECENT_DONE`` done items, each with how many there are in all."""
    result = {}
    for priority in Priority.in_service_order():
        directory = layout.pending(priority)
        ids = _ids(directory)
        result[priority.value] = {"total": len(ids),
                                  "rows": _rows(layout, directory, ItemState.PENDING, priority, ids[:QUEUE_ROWS])}
    for state, pick in ((ItemState.HELD, slice(0, QUEUE_ROWS)), (ItemState.FAILED, slice(-QUEUE_ROWS, None)),
                        (ItemState.DONE, slice(-RECENT_DONE, None))):
        directory = layout.state_dir(state)
        ids = _ids(directory)
        result[state.value] = {"total": len(ids), "rows": _rows(layout, directory, state, None, ids[pick])}
    return result


def recent_events(layout: Layout, since: datetime | None, now: datetime) -> dict:
    """The last events (read backwards from the end of the log), and the failures (failed,
    rejected, skipped, held back...) with their reasons since ``since``, by default over the
    last ``FAILURE_DAYS`` days: only the monthly segments that can hold them are read."""
    last = events.read(layout, since=since, last=EVENT_ROWS)
    window = since or now - timedelta(days=FAILURE_DAYS)
    log = events.read(layout, since=window)
    failures = [e for e in log.events if e.get("event") in FAILURE_EVENTS]
    return {"events": last.events, "failures": failures[-FAILURE_ROWS:], "failure_total": len(failures),
            "failure_since": iso(window), "unreadable_lines": log.unreadable_lines + last.unreadable_lines}


def _read_version(directory: Path) -> tuple[dict, str | None]:
    try:
        data = orjson.loads(read_regular(directory / VERSION_FILE, VERSION_LIMIT))
    except FileNotFoundError:
        return {}, f"no {VERSION_FILE}"
    except (OSError, orjson.JSONDecodeError) as exc:
        return {}, f"{VERSION_FILE} unreadable: {exc}"
    if not isinstance(data, dict):
        return {}, f"{VERSION_FILE} is not a JSON object"
    return data, None


def _version_names(directory: Path) -> list[str]:
    try:
        names = [n for n in os.listdir(directory) if _VERSION.fullmatch(n)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(names, key=lambda n: int(n[1:]))


def versions(layout: Layout, since: datetime | None) -> list[dict]:
    """Published versions and held-back candidates (``models/.candidates/``), oldest first,
    each with its metadata as written (keys may be missing) and where it lives."""
    models = layout.root / "models"
    try:
        latest = read_regular(models / "LATEST", 256).decode().strip()
    except (OSError, UnicodeDecodeError):
        latest = None
    found = []
    for where, directory in (("published", models), ("candidate", models / ".candidates")):
        for name in _version_names(directory):
            meta, problem = _read_version(directory / name)
            if since is not None and not _at_or_after(meta.get("created_at"), since):
                continue
            found.append({"name": name, "where": where, "latest": name == latest and where == "published",
                          "meta": meta, "problem": problem})
    return sorted(found, key=lambda v: (int(v["name"][1:]), v["where"]))


def _at_or_after(stamp: object, since: datetime) -> bool:
    try:
        return parse_iso(stamp) >= since  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True  # no time known: shown


# --- disk use --------------------------------------------------------------------------------

def disk_use(layout: Layout) -> list[dict]:
    """Bytes on disk per kind of content. A file hard-linked into several places (a version's
    weights are a link to a checkpoint's) is counted once, in the first place listed."""
    root = layout.root
    models = root / "models"
    queued = [root / "pending", *(layout.state_dir(s) for s in ItemState if s is not ItemState.PENDING)]
    places = [("checkpoints", [root / "checkpoints"]),
              ("versions", [models / n for n in _version_names(models)]),
              ("candidates", [models / ".candidates"]),
              ("snapshots", [root / "snapshots"]),
              ("base model", [models / "base"]),
              ("queued data", queued),
              ("metrics", [root / "metrics"]),
              ("event log", [layout.events_dir])]
    seen: set[tuple[int, int]] = set()
    return [{"what": what, "bytes": sum(_tree_bytes(p, seen) for p in paths)} for what, paths in places]


def disk_use_cached(layout: Layout, cached: object, now: clock.Reading) -> tuple[dict, bool]:
    """Disk use, walked again only when the cached figures are older than
    ``DISK_USE_MAX_AGE_S`` (on the monotonic clock, across processes: ``clock.elapsed``): a
    walk of 10,000 item directories is most of a report's time. Returns the figures (with
    when they were taken) and whether they are new."""
    if isinstance(cached, dict) and isinstance(cached.get("places"), list):
        age = clock.elapsed(cached.get("stamp"), now)
        if age is not None and age <= DISK_USE_MAX_AGE_S:
            return cached, False
    return {"places": disk_use(layout), "at": iso(now.wall), "stamp": clock.stamp(now)}, True


def _tree_bytes(path: Path, seen: set[tuple[int, int]]) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(Path(entry.path))
                    elif (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_blocks * 512
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return total


def collect(layout: Layout, config: Config, *, since: datetime | None = None,
            now: clock.Reading | None = None) -> dict:
    """Everything but the curves (``curves.py``) and disk use (cached), as plain data."""
    reading = now or clock.read()
    return {"generated_at": iso(reading.wall), "since": iso(since) if since else None,
            "status": status.collect(layout, config, reading), "queues": queues(layout),
            "history": recent_events(layout, since, reading.wall), "versions": versions(layout, since)}
