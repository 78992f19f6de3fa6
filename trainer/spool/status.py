"""What `trainctl status` reports, assembled from the lock, the state file and the spool.

``collect`` reads; ``summarize`` decides. The daemon is called alive only when it holds the
lock *and* its heartbeat is fresh (on the monotonic clock: ``control.heartbeat_age``): a
killed daemon's state file says "training" forever.

``collect`` reads through ``os`` calls only, so that trainctl can pass a ``PlainLayout`` and
never import ``pathlib``; what needs more (the active item's metadata, held-back versions)
is read only when it is there and shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from trainer import clock
from trainer.spool import control, listing
from trainer.spool.layout import Layout
from trainer.spool.lock import lock_holder
from trainer.states import Liveness

if TYPE_CHECKING:  # only for the annotation: status reads the config only when it must
    from trainer.config import Config

STATUS_SCHEMA = 1


def eta_seconds(progress: dict) -> float | None:
    """Time left for the current item, from its step rate; None until it is known."""
    step, total, per_step = progress.get("step"), progress.get("total"), progress.get("seconds_per_step")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (step, total, per_step))
    if not numbers or total <= 0 or per_step <= 0:
        return None
    return max(0.0, (total - step) * per_step)


def item_progress(state: dict | None, active: dict | Callable[[], dict | None] | None) -> dict | None:
    """The current item as status shows it: the daemon's progress (percent, ETA) or, without
    one, the active item's name and records (``active``: those, or a function that reads them,
    called only then)."""
    item = state.get("item") if state else None
    if isinstance(item, dict):
        progress = dict(item)
        step, total = progress.get("step"), progress.get("total")
        if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
            progress["percent"] = round(100.0 * step / total, 1)
        progress["eta_s"] = eta_seconds(progress)
        return progress
    return active() if callable(active) else active


def explain_heartbeat(live: Liveness, state: dict | None, state_problem: str | None, disk: dict,
                      now: clock.Reading) -> tuple[Liveness, str | None]:
    """A daemon that holds the lock but has no heartbeat to show is not called hung when
    something else explains it: its state file is damaged or missing, or the base dir's
    filesystem cannot take a write (read-only, or full where the file cannot even be written
    over in place). Returns the verdict and, for ``unknown``, what is wrong."""
    unwritable = _unwritable(disk)
    if live is Liveness.UNKNOWN:
        problem = state_problem or ("the daemon's state file has no readable heartbeat" if state
                                    else "the daemon's state file is missing")
        return live, problem + (f" ({unwritable}, so the daemon cannot write it)" if unwritable else "")
    if live is Liveness.UNRESPONSIVE and unwritable:
        age = control.heartbeat_age(state, now)
        return Liveness.UNKNOWN, (f"its last heartbeat is {age:.0f} s old, and {unwritable}, so the daemon "
                                  f"cannot write one")
    return live, state_problem


def _unwritable(disk: dict) -> str | None:
    if disk.get("read_only"):
        return "the base dir's filesystem is read-only"
    if disk.get("free_bytes") == 0 or disk.get("free_inodes") == 0:
        return "the base dir's filesystem is full"
    return None


def previous_runs_state(holder: int | None, state: dict | None, lock_age_s: float | None,
                        stale_after_s: float) -> dict | None:
    """The record to judge a daemon by when its state file is still the previous run's (the
    lock holder is another pid: it has only just started), or None when the file is its own.

    A new daemon writes "starting" within moments of taking the lock; until then it is shown
    as starting, not judged by its predecessor's stale heartbeat, for as long as a heartbeat
    may be missed (counted from when it wrote its pid into the lock file)."""
    if not holder or not state or state.get("pid") in (None, holder):
        return None
    if lock_age_s is None or lock_age_s > stale_after_s:
        return None  # long enough to have written one: judge the old heartbeat (unresponsive)
    return {"state": "starting", "pid": holder, "reason": "starting up (its state file is not written yet)"}


def summarize(
    *, holder: int | None, state: dict | None, state_problem: str | None,
    requests: control.Requests, queues: dict, active: dict | Callable[[], dict | None] | None, disk: dict,
    now: clock.Reading, stale_after_s: float, base_dir: str, held_back: list[dict] | None = None,
    lock_age_s: float | None = None,
) -> dict:
    starting = previous_runs_state(holder, state, lock_age_s, stale_after_s)
    live = Liveness.RUNNING if starting else control.liveness(holder, state, now, stale_after_s)
    live, state_problem = explain_heartbeat(live, state, state_problem, disk, now)
    alive = live is not Liveness.NOT_RUNNING
    last_state = state.get("state") if state else None
    shown = starting or state  # what the daemon says now (its predecessor's file tells nothing)
    daemon = {
        "liveness": live.value,
        "pid": holder if alive else None,
        # A dead daemon has no state; what its file last said is shown as history only.
        "state": shown.get("state") if shown and alive else None,
        "last_state": last_state,
        "last_pid": state.get("pid") if state else None,
        "reason": shown.get("reason") if shown and alive else None,
        "started_at": state.get("started_at") if state else None,
        "heartbeat_age_s": control.heartbeat_age(state, now),
        "state_problem": state_problem,
    }
    paused = requests.pause is not None or (alive and last_state == "paused")
    item = item_progress(state if alive and not starting else None, active)
    if item is not None and paused:  # nothing moves: the last step's speed and an ETA would be false
        item = {**item, "eta_s": None, "tokens_per_s": None}
    return {
        "schema_version": STATUS_SCHEMA,
        "base_dir": base_dir,
        "daemon": daemon,
        "paused": requests.pause is not None,
        "pause_reason": (requests.pause or {}).get("reason"),
        "requests": [name for name in ("stop", "skip", "pause") if getattr(requests, name) is not None],
        "item": item,
        "queues": queues,
        "last_checkpoint": state.get("last_checkpoint") if state else None,
        "last_error": state.get("last_error") if state else None,
        "last_eval": state.get("last_eval") if state else None,
        "held_back": held_back or [],
        "memory": state.get("memory") if state and alive else None,
        "world": state.get("world") if state and alive else None,  # the ranks, when there are several
        "disk": disk,
    }


def disk_usage(layout: Layout) -> dict:
    """Free and total bytes of the base dir's filesystem, free inodes (None where it does not
    count them) and whether it is mounted read-only."""
    fs = os.statvfs(layout.root)
    return {"free_bytes": fs.f_bavail * fs.f_frsize, "total_bytes": fs.f_blocks * fs.f_frsize,
            "free_inodes": fs.f_favail if fs.f_files else None, "read_only": bool(fs.f_flag & os.ST_RDONLY)}


def stale_after(state: dict | None, holder: int | None, config: Config | Callable[[], Config]) -> float:
    """The heartbeat age past which the daemon is called unresponsive: the daemon's own, as its
    state file says (its running config, whatever the file on disk says now), else the
    config's. The config is loaded only then: a plain ``trainctl status`` does not pay for it."""
    own = state.get("stale_after_s") if state else None
    if isinstance(own, (int, float)) and not isinstance(own, bool) and own > 0:
        return float(own)
    if holder is None:
        return 0.0  # no daemon: no heartbeat to judge
    return (config() if callable(config) else config).daemon.stale_after_seconds


def collect(layout: Layout, config: Config | Callable[[], Config], now: clock.Reading) -> dict:
    """``config``: the config, or a function that loads it (called only when needed)."""
    state, problem = control.read_state(layout)
    holder = lock_holder(layout)
    # Listed now, its metadata read only if shown (the daemon's own progress says more): while
    # it trains, status does not load the item module (~1.5 ms of its start-up).
    active_id = listing.active_id(layout)
    active = None if active_id is None else lambda: _active(layout)
    return summarize(
        holder=holder, state=state, state_problem=problem,
        requests=control.read_requests(layout), queues=listing.counts(layout), active=active,
        disk=disk_usage(layout), lock_age_s=_lock_age(layout, now),
        now=now, stale_after_s=stale_after(state, holder, config), base_dir=str(layout.root),
        held_back=_held_back(layout),
    )


def _active(layout: Layout) -> dict | None:
    """The active item's name and records (None if it has just left)."""
    from trainer.spool import queue  # only then: its state changes are no part of a status

    current = queue.active_item(layout)
    if current is None:
        return None
    return {"id": current.id, "name": current.meta.name if current.meta else None,
            "records": current.meta.records if current.meta else None}


def _held_back(layout: Layout) -> list[dict]:
    """The versions the gate held back. The candidates module (and the event log it imports)
    loads only where its directory exists: a plain status stays light."""
    if not os.path.isdir(os.path.join(layout.models, ".candidates")):  # candidates.CANDIDATES
        return []
    from pathlib import Path

    from trainer.spool import candidates

    return [{"version": c.name, "reason": c.gate.get("reason")} for c in candidates.held_back(Path(layout.models))]


def _lock_age(layout: Layout, now: clock.Reading) -> float | None:
    """Seconds since the lock file was last written: the daemon writes its pid into it as it
    takes the lock (wall clock: the file's mtime)."""
    try:
        return now.wall.timestamp() - os.stat(layout.daemon_lock).st_mtime
    except OSError:
        return None
