"""The real daemon on a wall clock that jumps a day forward, then a day back, while it works.

Only the daemon's process is on the moved clock: libfaketime (Debian's ``faketime`` package)
is preloaded into it and re-reads the offset from a file at every call, so the test moves the
clock of the running daemon by rewriting that file; its monotonic clock stays real
(FAKETIME_DONT_FAKE_MONOTONIC). The test itself stays on the real clock: a file it writes into
the inbox is given the mtime a kernel on the moved clock would give it (os.utime), and
NO_FAKE_STAT lets the daemon see those mtimes as they are.

One run, in order: a copy paused across the jump forward is taken whole once it settles, and
a retry delay is not released by that jump; the next delay is not stretched by the jump back,
and files written across it are not stranded; one snapshot per new day, none repeated; and
``trainctl status`` says running whichever way its clock and the daemon's disagree, and
unresponsive once the daemon is frozen (SIGSTOP).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

import orjson
import pytest

pytest.importorskip("torch")

from helpers.common import REPO  # noqa: E402
from helpers.daemon_proc import DaemonProcess, enqueue_sample, small_config  # noqa: E402

from trainer.config import default_config_toml, load_config  # noqa: E402
from trainer.intake import enqueue  # noqa: E402
from trainer.spool import queue  # noqa: E402
from trainer.spool.layout import init_base  # noqa: E402
from trainer.states import ItemState  # noqa: E402
from trainer.timefmt import parse_iso  # noqa: E402

DAY = 86_400
SETTLE_S = 5.0
RETRY_S = 4.0  # the first retry delay; the second is twice that
CONFIG = small_config(spool={"inbox_settle_seconds": SETTLE_S, "max_attempts": 3},
                      daemon={"retry_delay_seconds": RETRY_S, "stale_after_seconds": 5},
                      snapshot={"at": "00:00"})
IO_ERROR_DAEMON = (sys.executable, str(Path(__file__).resolve().parents[1] / "helpers" / "io_error_daemon.py"))


def _library(name: str) -> Path | None:
    for pattern in ("/usr/lib/*/faketime", "/usr/lib/faketime", "/usr/local/lib/faketime"):
        for directory in sorted(glob.glob(pattern)):
            if (Path(directory) / name).is_file():
                return Path(directory) / name
    return None


def _forget_shared_memory(pid: int) -> None:
    """libfaketime leaves a shared-memory segment and a semaphore named after each process it
    ran in; a later process with the same pid would trip over them."""
    for name in (f"faketime_shm_{pid}", f"sem.faketime_sem_{pid}"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{name}")


def _run(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, **env})
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        _forget_shared_memory(proc.pid)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _on_a_clock(library: Path, offset: int) -> dict:
    return {"LD_PRELOAD": str(library), "FAKETIME": f"{offset:+d}", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.fixture(scope="module")
def libfaketime() -> tuple[Path, Path]:
    """(the library for the threaded daemon, the one for trainctl), once shown to work here."""
    threaded, plain = _library("libfaketimeMT.so.1"), _library("libfaketime.so.1")
    if threaded is None or plain is None:
        pytest.skip("libfaketime not found (Debian's package: apt-get install faketime)")
    probe = "import time; print(time.time(), time.monotonic())"
    before = (time.time(), time.monotonic())
    result = _run([sys.executable, "-c", probe], _on_a_clock(threaded, DAY))
    try:
        wall, monotonic = map(float, result.stdout.split())
    except ValueError:
        pytest.skip(f"libfaketime ({threaded}) does not run here: {result.stderr.strip()[-300:]}")
    if abs(wall - before[0] - DAY) > 60 or abs(monotonic - before[1]) > 60:
        pytest.skip(f"libfaketime ({threaded}) does not move only the wall clock here")
    return threaded, plain


class MovedClock:
    """The daemon's wall clock: real time plus an offset libfaketime re-reads from a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._publish()

    def env(self, library: Path) -> dict:
        return {"LD_PRELOAD": str(library), "FAKETIME_TIMESTAMP_FILE": str(self.path), "FAKETIME_NO_CACHE": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"}

    def jump(self, seconds: int) -> None:
        self.offset += seconds
        self._publish()

    def _publish(self) -> None:
        fresh = self.path.with_suffix(".new")
        fresh.write_text(f"{self.offset:+d}\n")
        os.replace(fresh, self.path)  # never half a line for the daemon to misread

    def now(self) -> float:
        return time.time() + self.offset

    def day(self) -> str:
        return datetime.fromtimestamp(self.now()).date().isoformat()

    def write(self, path: Path, data: bytes) -> None:
        """Append, and stamp the mtime as a kernel on this clock would."""
        with open(path, "ab") as fh:
            fh.write(data)
        stamp = int(self.now() * 1e9)
        os.utime(path, ns=(stamp, stamp))


def _records(tag: str, count: int = 6) -> bytes:
    return b"".join(orjson.dumps({"text": f"{tag} {n}: " + "a slow copy " * 8}) + b"\n" for n in range(count))


def _chunks(data: bytes, count: int = 6) -> list[bytes]:
    """Cut mid-line, as a copy is: a file taken half-written fails as invalid JSON."""
    cuts = [0, *(len(data) * k // count + 5 for k in range(1, count)), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def _item_named(layout, name: str):
    for item in queue.list_items(layout, list(ItemState)):
        if item.meta is not None and item.meta.name == name:
            return item
    return None


def _taken_whole(layout, daemon, name: str, data: bytes) -> None:
    daemon.wait_for(lambda: _item_named(layout, name) is not None, timeout=60, what=f"{name} taken")
    item = _item_named(layout, name)
    assert item.state is not ItemState.FAILED, item.meta.errors
    assert item.meta.records == 6 and item.meta.sha256 == hashlib.sha256(data).hexdigest(), "taken whole"


def _sees(daemon, clock: MovedClock) -> bool:
    """The daemon's latest heartbeat was written on the clock as it is now."""
    state = daemon.state()
    at = state.get("heartbeat_at")
    return state.get("pid") == daemon.pid and isinstance(at, str) and abs(parse_iso(at).timestamp() - clock.now()) < 60


def _liveness(base, library: Path | None = None, offset: int = 0) -> str:
    """What `trainctl status` says, run on the real clock or on one ``offset`` seconds away."""
    result = _run([sys.executable, "-m", "ctl", "--base-dir", str(base.root), "status", "--json"],
                  _on_a_clock(library, offset) if library else {})
    assert result.stdout, result.stderr
    return orjson.loads(result.stdout)["daemon"]["liveness"]


@pytest.fixture
def base(tmp_path, demo_model):
    layout, _ = init_base(tmp_path / "base", default_config_toml())
    layout.config_file.write_text(CONFIG)
    shutil.copytree(demo_model, layout.root / "models" / "base")
    return layout


def test_every_decision_survives_a_wall_clock_jump_of_a_day_forward_then_back(base, tmp_path, libfaketime):
    threaded, plain = libfaketime
    first_day = date.today()
    enqueue_sample(base, tmp_path, records=20, name="warm")  # trained first: the day's snapshot needs steps
    failing = tmp_path / "failing.jsonl"
    failing.write_bytes(_records("IO-ERROR"))  # io_error_daemon.py fails it with EIO every time
    failing_id = enqueue.enqueue(base, failing, limits=load_config(base.config_file).spool).id
    clock = MovedClock(tmp_path / "faketime")
    daemon = DaemonProcess(base, env=clock.env(threaded), program=IO_ERROR_DAEMON)
    try:
        day_0 = clock.day()
        daemon.wait_for(lambda: queue.find(base, failing_id).meta.attempts == 1
                        and queue.find(base, failing_id).state is ItemState.PENDING, timeout=180,
                        what="the first failure of the failing item")
        retry_waits_since = time.monotonic()  # its delay began at most this long ago

        # +1 day during a pause in a copy, with a retry delay running.
        copy, copied = base.inbox / "slow.jsonl", _records("slow")
        for chunk in _chunks(copied)[:3]:
            clock.write(copy, chunk)
            time.sleep(0.2)
        paused_since = time.monotonic()
        clock.jump(DAY)
        daemon.wait_for(lambda: _sees(daemon, clock), timeout=30, what="the daemon on the clock a day ahead")
        seen = time.monotonic()
        # Watched while neither the retry delay nor the copy's settle period can be over.
        hold_until = min(seen + 1.0, retry_waits_since + RETRY_S - 0.5, paused_since + SETTLE_S - 1.0)
        assert hold_until - seen >= 0.3, "the daemon took too long to see the jump for this check"
        while time.monotonic() < hold_until:
            failing_item = queue.find(base, failing_id)
            assert failing_item.state is ItemState.PENDING and failing_item.meta.attempts == 1, \
                "a jump forward released a retry before its delay"
            assert copy.exists(), "a jump forward took a copy in progress"
            time.sleep(0.05)
        for chunk in _chunks(copied)[3:]:
            clock.write(copy, chunk)
            time.sleep(0.5)
        _taken_whole(base, daemon, "slow.jsonl", copied)
        daemon.wait_for(lambda: queue.find(base, failing_id).meta.attempts == 2, timeout=60,
                        what="the second failure, after its delay")
        day_1 = clock.day()
        daemon.wait_for(lambda: day_1 in os.listdir(base.root / "snapshots"), timeout=60, what="the new day's snapshot")
        assert _liveness(base) == "running", "the daemon's clock a day ahead of trainctl's"

        # -1 day: a file finished just before it, one written across it, a retry delay running.
        finished, finished_data = base.inbox / "finished.jsonl", _records("finished")
        clock.write(finished, finished_data)  # its mtime will be a day in the daemon's future
        across, across_data = base.inbox / "across.jsonl", _records("across")
        for chunk in _chunks(across_data)[:3]:
            clock.write(across, chunk)
        clock.jump(-DAY)
        daemon.wait_for(lambda: _sees(daemon, clock), timeout=30, what="the daemon back on the real day")
        for chunk in _chunks(across_data)[3:]:
            clock.write(across, chunk)  # mtimes a day before the first chunks'
            time.sleep(0.5)
        daemon.wait_for(lambda: queue.find(base, failing_id).state is ItemState.FAILED, timeout=60,
                        what="the third attempt, not held for a day by the jump back")
        assert "(attempt 3 of 3)" in queue.find(base, failing_id).meta.last_error.message
        _taken_whole(base, daemon, "finished.jsonl", finished_data)
        _taken_whole(base, daemon, "across.jsonl", across_data)
        daemon.wait_for(lambda: queue.counts(base)["pending"] == 0 and queue.counts(base)["active"] == 0,
                        timeout=120, what="everything trained")
        if date.today() != first_day:
            pytest.skip("the test ran across local midnight: the days it expects moved")
        assert sorted(os.listdir(base.root / "snapshots")) == [day_0, day_1], "one snapshot per new day"
        assert orjson.loads(base.housekeeping.read_bytes())["last_snapshot"] == day_1, "none repeated"
        log = (base.root.parent / "daemon.log").read_text(errors="replace")
        assert log.count(" taken at step ") == 2, log

        # trainctl on a clock a day ahead of the daemon's, or a day behind.
        assert [_liveness(base, plain, offset) for offset in (0, DAY, -DAY)] == ["running"] * 3
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            daemon.wait_for(lambda: _liveness(base, plain, -DAY) == "unresponsive", timeout=60,
                            what="a frozen daemon whose heartbeat is a day in trainctl's future shown unresponsive")
            assert _liveness(base) == "unresponsive"
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        daemon.wait_for(lambda: _liveness(base) == "running", timeout=60, what="running again after SIGCONT")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish() == 0, daemon.output()
    finally:
        daemon.kill()
        _forget_shared_memory(daemon.pid)
