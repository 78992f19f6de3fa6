"""The control protocol: trainctl's requests and the daemon's state, sender beside receiver.

Requests are files in ``control/``, each published atomically:

- ``pause.json``: level-triggered. Present means "be paused"; it survives daemon restarts,
  and ``resume`` removes it. Two concurrent pauses simply leave one file.
- ``skip.json``: names the item it is for, so a late skip can never hit the next item.
- ``stop.json``: finish the current step, checkpoint, exit 0.
- ``consolidate.json``: publish a version at the next idle moment.
- ``rollback.json``: continue training from a published version, between items; it carries
  an id, so a daemon that crashed half-way through it finishes it instead of starting over.

When several are pending the daemon obeys **stop, then skip, then pause** (``decide``).

The daemon publishes ``run/daemon.json`` (state, pid, heartbeat, progress). Whether it is
alive is never taken from that file alone: a crashed daemon leaves it saying "training".
Liveness is the daemon lock being held, and the heartbeat being fresh, measured on the
monotonic clock (the heartbeat carries its reading, see ``write_state``): a wall-clock jump
neither makes a healthy daemon look hung nor a hung one look alive.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from trainer import clock
from trainer.spool.fsutil import DISK_ERRNOS, overwrite_in_place, read_regular, unlink_durably, write_atomic
from trainer.spool.layout import Layout
from trainer.states import Liveness
from trainer.timefmt import iso, parse_iso, utc_now

if TYPE_CHECKING:
    from pathlib import Path

STATE_SCHEMA = 1
# While its state says "starting" (the model loading: minutes for a large one, with no
# heartbeat possible), a daemon is given this long before it is called unresponsive: the
# time systemd gives it (``EXTEND_TIMEOUT_USEC``) before killing it.
STARTUP_ALLOWANCE_S = 600.0


class Request(str, Enum):
    STOP = "stop"
    SKIP = "skip"
    PAUSE = "pause"
    CONSOLIDATE = "consolidate"
    ROLLBACK = "rollback"


def _request_path(layout: Layout, request: Request) -> Path:
    return layout.control_file(f"{request.value}.json")


def _send(layout: Layout, request: Request, **fields: Any) -> dict:
    body = {"request": request.value, "at": iso(utc_now()), "by_pid": os.getpid(), **fields}
    write_atomic(layout.tmp, _request_path(layout, request), orjson.dumps(body) + b"\n")
    return body


def _clear(layout: Layout, request: Request) -> bool:
    # Durable, so a lifted pause cannot come back after a power loss.
    return unlink_durably(_request_path(layout, request))


# --- sent by trainctl ----------------------------------------------------------------------

def send_pause(layout: Layout, reason: str | None = None) -> dict:
    return _send(layout, Request.PAUSE, reason=reason)


def send_resume(layout: Layout) -> bool:
    """Lift a pause; False if there was none."""
    return _clear(layout, Request.PAUSE)


def send_skip(layout: Layout, item_id: str, reason: str | None = None) -> dict:
    return _send(layout, Request.SKIP, item=item_id, reason=reason)


def send_stop(layout: Layout, reason: str | None = None) -> dict:
    return _send(layout, Request.STOP, reason=reason)


def send_consolidate(layout: Layout) -> dict:
    """Consolidate at the next moment the queue is idle (never while training)."""
    return _send(layout, Request.CONSOLIDATE)


def send_rollback(layout: Layout, version: str, *, requeue: bool) -> dict:
    """Continue training from ``version`` at the next moment between items (``requeue``: queue
    again the items trained after it). A later request replaces one not yet acted on."""
    return _send(layout, Request.ROLLBACK, version=version, requeue=requeue, id=os.urandom(8).hex())


# --- read by the daemon (every optimizer step: one listdir, then only what exists) ----------

# A NamedTuple, not a frozen dataclass: built at import, and a dataclass costs every trainctl
# command ~0.5 ms of start-up (it compiles its methods); this one needs none of theirs.
class Requests(NamedTuple):
    pause: dict | None = None
    skip: dict | None = None
    stop: dict | None = None
    consolidate: dict | None = None
    rollback: dict | None = None


REQUEST_LIMIT = 64 << 10  # a request is a reason and a few fields
STATE_LIMIT = 1 << 20


def _load_request(path: Path | str) -> dict | None:
    try:
        # Any group member can put anything here: a fifo must not hang the daemon, a symlink
        # to /dev/zero must not fill its memory.
        body = orjson.loads(read_regular(path, REQUEST_LIMIT))
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError):
        body = {}
    # A damaged request still counts (its presence is the request), without its details.
    return body if isinstance(body, dict) else {}


def read_requests(layout: Layout) -> Requests:
    """The requests pending (a ``PlainLayout`` will do)."""
    try:
        names = set(os.listdir(layout.control))
    except FileNotFoundError:
        return Requests()
    found = {}
    for request in Request:
        name = f"{request.value}.json"
        if name in names:
            found[request.value] = _load_request(layout.control_file(name))
    return Requests(**found)


class Action(str, Enum):
    NONE = "none"
    STOP = "stop"
    SKIP = "skip"
    PAUSE = "pause"


def decide(requests: Requests, active_id: str | None) -> Action:
    """What the daemon does after this optimizer step: stop beats skip beats pause."""
    if requests.stop is not None:
        return Action.STOP
    if requests.skip is not None and active_id is not None and requests.skip.get("item") == active_id:
        return Action.SKIP
    if requests.pause is not None:
        return Action.PAUSE
    return Action.NONE


def clear_skip(layout: Layout) -> bool:
    return _clear(layout, Request.SKIP)


def clear_stop(layout: Layout) -> bool:
    return _clear(layout, Request.STOP)


def clear_consolidate(layout: Layout) -> bool:
    return _clear(layout, Request.CONSOLIDATE)


def clear_rollback(layout: Layout) -> bool:
    return _clear(layout, Request.ROLLBACK)


# --- the daemon's state file ---------------------------------------------------------------

def write_state(layout: Layout, state: dict) -> None:
    """Publish the daemon's state (the daemon adds heartbeat and pid; see ``daemon_state``),
    stamped with the monotonic clock as it is written: what ``heartbeat_age`` measures by.

    Not fsynced: it is rewritten every second while training and is for display only (the
    daemon replaces it at start, liveness comes from the lock, and readers cope with a damaged
    one), and two fsyncs a second were most of the daemon's own cost.

    On a disk with no room for a new copy (full, out of inodes, over quota) the record is
    written over the old one in place, in the blocks that file already has, so that a blocked
    daemon still says why and still heartbeats; a reader may then catch it half-written, which
    ``read_state`` reads again. Raises the disk's error when even that is impossible (a
    read-only filesystem): the caller logs it and goes on, since nothing depends on this file.
    """
    record = {"schema": STATE_SCHEMA, **state, "heartbeat_clock": clock.stamp(clock.read())}
    data = orjson.dumps(record) + b"\n"
    try:
        write_atomic(layout.tmp, layout.daemon_state, data, durable=False)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS or not overwrite_in_place(layout.daemon_state, data):
            raise


def daemon_state(state: str, *, pid: int, started_at: datetime, now: datetime, **fields: Any) -> dict:
    """The daemon state record: state, pid, start and heartbeat times, then any of
    item (id, name, step, total, loss, tokens_per_s), last_checkpoint, last_error, reason."""
    return {"state": state, "pid": pid, "started_at": iso(started_at), "heartbeat_at": iso(now), **fields}


def read_state(layout: Layout) -> tuple[dict | None, str | None]:
    """The daemon's last published state, or why it cannot be read (never raises on garbage;
    a ``PlainLayout`` will do).

    Read up to three times before it is called damaged: on a full disk the daemon writes it in
    place, and a read can catch that half-done."""
    for attempt in range(3):
        data, problem = _read_state_once(layout)
        if data is not None or problem is None or attempt == 2:
            return data, problem
        time.sleep(0.01)
    return data, problem


def _read_state_once(layout: Layout) -> tuple[dict | None, str | None]:
    path = layout.daemon_state
    try:
        data = orjson.loads(read_regular(path, STATE_LIMIT))
    except FileNotFoundError:
        return None, None
    except PermissionError:
        return None, f"{path}: permission denied"
    except orjson.JSONDecodeError as exc:
        return None, f"{path}: damaged: " + ("empty" if exc.pos == 0 and not exc.doc else f"not JSON ({exc})")
    except OSError as exc:
        return None, f"{path}: unreadable ({exc.strerror})"
    if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
        return None, f"{path}: not a daemon state record"
    return data, None


def heartbeat_age(state: dict | None, now: clock.Reading) -> float | None:
    """Seconds since the daemon's last heartbeat; None if unknown.

    On the monotonic clock whenever the heartbeat was written in this boot and time namespace
    (always, for a daemon on this machine), so a wall-clock jump changes nothing. Otherwise (a
    daemon on another machine sharing the base dir, or a state file older than the monotonic
    stamp) from the wall-clock times: there a jump moves the age by the jump.
    """
    if not state:
        return None
    age = clock.elapsed(state.get("heartbeat_clock"), now)
    if age is not None:
        return age
    if not isinstance(state.get("heartbeat_at"), str):
        return None
    try:
        return (now.wall - parse_iso(state["heartbeat_at"])).total_seconds()
    except ValueError:
        return None


def liveness(lock_holder: int | None, state: dict | None, now: clock.Reading, stale_after_s: float) -> Liveness:
    """Running only if the lock is held *and* the heartbeat is fresh; unknown if the lock is held
    but there is no heartbeat to judge.

    On the wall-clock fallback of ``heartbeat_age``, a heartbeat from the future (the clock
    jumped back) counts as fresh: the lock already proves a live process.
    """
    if lock_holder is None:
        return Liveness.NOT_RUNNING
    age = heartbeat_age(state, now)
    if age is None:  # no heartbeat to judge (the state file is damaged or gone): not a hang
        return Liveness.UNKNOWN
    if state.get("state") == "starting":
        stale_after_s = max(stale_after_s, STARTUP_ALLOWANCE_S)
    if age > stale_after_s:
        return Liveness.UNRESPONSIVE
    return Liveness.RUNNING
