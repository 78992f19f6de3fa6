"""A disk that fills to the last byte, runs out of inodes or turns read-only under the real daemon.

    .venv/bin/python bench/chaos_disk.py [--items 8] [--records 120] [--fills 24] [--seed 1] [--keep DIR]

Needs root (it mounts a tmpfs, always unmounted at the end). The same training files are
trained twice on the tiny demo model (CPU, ``train.deterministic = true``): once straight
through, on an ordinary disk, and once by one daemon whose base dir is on a small tmpfs
(``size=128m,nr_inodes=4000``) that the harness takes away ``--fills`` times, each at a
moment chosen at random (seeded), in one of three ways:

  bytes     dd if=/dev/zero until ENOSPC (all but the last MiB taken by fallocate first, so
            the fill lands within ~40 ms), then kept at 0 bytes free (topped up every 20 ms,
            as a runaway writer would) until released
  inodes    empty files created until ENOSPC, kept at 0 free inodes the same way
  readonly  mount -o remount,ro under the running daemon; released by remount,rw

and at one of these moments:

  step           a random instant while an item trains
  checkpoint     as soon as a checkpoint's staging dir appears: mid-write (bytes and inodes
                 with the daemon stopped by SIGSTOP while the disk is taken, so the rest of
                 the write meets it; the same for snapshot and consolidation)
  snapshot       as soon as the daily snapshot's staging dir appears (the harness makes one
                 due by dating the last one yesterday in run/housekeeping.json)
  consolidation  as soon as a version's staging dir appears (the queue drained, the daemon
                 consolidates when idle)
  intake         a file dropped into the inbox of an idle daemon meets the full disk (copied
                 in as inbox/.name first, renamed once the disk is full: a rename needs no room)
  enqueue        as soon as trainctl enqueue has made its staging dir (stopped meanwhile)

The files are fed one at a time, in order (trainctl enqueue or the inbox), so both runs train
them in the same order. The daemon runs with NOTIFY_SOCKET pointing at the harness and
WATCHDOG_USEC set, as under systemd: STATUS and WATCHDOG=1 are how a blocked daemon is seen
even on a read-only disk. For each fill it measures the time from the disk refusing writes to
STATUS=blocked, the longest gap between watchdog pings while blocked, and the time from the
release to the first STATUS that is not blocked. It checks, failing with exit 1 if any is wrong:

- the daemon was blocked after every fill that left it something to write (STATUS=blocked,
  watchdog pings on), trained no step while blocked, and resumed by itself;
- trainctl status never called it unresponsive; trainctl enqueue either queued the file or
  said in one line what to do, with nothing left behind;
- no main-loop error, no traceback, no event line left unwritten; the daemon exits 0 at the end;
- no attempt burned, no item failed, every item done exactly once (events.jsonl);
- no torn line in metrics/ or events.jsonl; each global step's metrics line written once;
- every step's loss and the final weights, optimizer state, RNG state and step/token counts
  identical to the straight run; no staging debris left.

Prints a JSON report. The quick version is tests/test_disk_full.py.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIG = """
[train]
max_length = 128
micro_batch_size = 2
learning_rate = 0.001
warmup_steps = 3
deterministic = true
[checkpoint]
every_steps = 2
keep_last = 2
[daemon]
heartbeat_seconds = 0.2
stale_after_seconds = 10
min_free_bytes = 1048576
disk_check_seconds = {disk_check}
retry_delay_seconds = 0.2
consolidate_when_idle = {consolidate}
[snapshot]
at = "00:00"
keep_days = 2
[consolidate]
keep_versions = 2
[spool]
inbox_settle_seconds = 0.2
max_attempts = 1000
"""

KINDS = ("bytes", "inodes", "readonly")
MOMENTS = ("step", "checkpoint", "snapshot", "consolidation", "intake", "enqueue")
TMPFS = "size=128m,nr_inodes=4000"
DISK_CHECK_S = 1.0
WAIT_S = 120.0  # generous: the machine may be busy
POLL_S = 0.002


class Problem(Exception):
    """Something the run must not do happened; the report lists it."""


# --- the files and the straight run ----------------------------------------------------

def make_files(work: Path, items: int, records: int, seed: int) -> list[Path]:
    from trainer.demo.sample_data import write_sample_chat

    data = work / "data"
    data.mkdir()
    return [write_sample_chat(data / f"item{n:03d}.jsonl", records, seed=seed * 1000 + n) for n in range(items)]


def new_base(root: Path, model: Path, *, consolidate: bool):
    from trainer.config import default_config_toml
    from trainer.spool.layout import init_base

    layout, _ = init_base(root, default_config_toml())
    layout.config_file.write_text(CONFIG.format(disk_check=DISK_CHECK_S, consolidate=str(consolidate).lower()))
    shutil.copytree(model, layout.root / "models" / "base")
    return layout


def daemon_argv(base: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "trainer.daemon", "run", "--base-dir", str(base), *args]


def run_straight(work: Path, model: Path, files: list[Path]) -> Path:
    from trainer.config import load_config
    from trainer.intake.enqueue import enqueue

    layout = new_base(work / "straight", model, consolidate=False)
    limits = load_config(layout.config_file).spool
    for path in files:
        enqueue(layout, path, limits=limits)
    with open(work / "straight.log", "wb") as out:
        code = subprocess.run(daemon_argv(layout.root, "--exit-when-idle"), stdout=out, stderr=subprocess.STDOUT,
                              cwd=REPO, timeout=3600).returncode
    if code != 0:
        raise SystemExit(f"the straight run exited {code}: see {work / 'straight.log'}")
    return layout.root


# --- what the daemon tells systemd -----------------------------------------------------

class NotifyListener:
    """The socket systemd would listen on: every datagram, with its monotonic arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, dict]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def statuses(self, since: float) -> list[tuple[float, str]]:
        return [(t, m["STATUS"]) for t, m in list(self.messages) if t >= since and "STATUS" in m]

    def pings(self, since: float, until: float) -> list[float]:
        return [t for t, m in list(self.messages) if since <= t <= until and m.get("WATCHDOG") == "1"]


# --- taking the disk away --------------------------------------------------------------

class Fill:
    """One way of making the disk refuse writes; ``start`` returns once it does."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.dir = mount / "fill"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def _keep_full(self, top_up) -> None:
        def run() -> None:
            while not self._stop.wait(0.02):
                top_up()
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def _stop_topping_up(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class BytesFill(Fill):
    """dd if=/dev/zero until ENOSPC, all but the last MiB taken first with fallocate: about
    40 ms in all, so a moment that lasts a fraction of a second (a checkpoint write, a
    version's staging) is not missed while 100 MB are written."""

    def start(self) -> None:
        self.dir.mkdir(exist_ok=True)
        self.path = self.dir / "bytes"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            stats = os.statvfs(self.mount)
            os.posix_fallocate(fd, 0, max(1, stats.f_bavail * stats.f_frsize - (1 << 20)))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:  # the daemon wrote meanwhile: dd takes the rest
                raise
        finally:
            os.close(fd)
        dd = subprocess.run(["dd", "if=/dev/zero", f"of={self.path}", "bs=64k", "oflag=append", "conv=notrunc"],
                            capture_output=True, text=True)
        if "No space left" not in dd.stderr:
            raise Problem(f"dd did not fill the disk: {dd.stderr.strip()}")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._keep_full(self._top_up)

    def _top_up(self) -> None:
        for size in (1 << 20, 1 << 12):  # what the daemon freed (old checkpoints), taken back
            try:
                while os.write(self._fd, b"\0" * size):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise

    def release(self) -> None:
        self._stop_topping_up()
        os.close(self._fd)
        self.path.unlink()


class InodesFill(Fill):
    """Empty files created until ENOSPC."""

    def start(self) -> None:
        self.dir.mkdir(exist_ok=True)
        self.count = 0
        self._top_up()
        if os.statvfs(self.mount).f_favail != 0:
            raise Problem("inodes left after the fill")
        self._keep_full(self._top_up)

    def _create_one(self) -> None:
        os.close(os.open(self.dir / f"i{self.count}", os.O_WRONLY | os.O_CREAT, 0o600))
        self.count += 1

    def _top_up(self) -> None:
        while True:
            try:
                self._create_one()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return

    def release(self) -> None:
        self._stop_topping_up()
        shutil.rmtree(self.dir, ignore_errors=True)


class ReadOnly(Fill):
    def start(self) -> None:
        _remount(self.mount, "ro")

    def release(self) -> None:
        _remount(self.mount, "rw")


def _remount(mount: Path, mode: str) -> None:
    """``mount -o remount,ro|rw``; ro is refused (busy) while a file there is open for writing,
    which lasts a write: tried again until it passes."""
    deadline = time.monotonic() + WAIT_S
    while True:
        done = subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise Problem(f"remount,{mode} kept failing: {done.stderr.strip()}")
        time.sleep(0.01)


FILLS = {"bytes": BytesFill, "inodes": InodesFill, "readonly": ReadOnly}


# --- one fill --------------------------------------------------------------------------

@dataclass
class Episode:
    kind: str
    moment: str
    landed: str = ""  # what the base dir showed when the disk refused writes
    blocked_s: float | None = None  # refusing writes to STATUS=blocked
    blocked_reason: str = ""
    watchdog_gap_s: float | None = None  # the longest gap between pings while blocked
    resumed_s: float | None = None  # release to the first STATUS that is not blocked
    steps_while_blocked: int = 0
    status_liveness: str = ""  # trainctl status --json while blocked
    enqueue: str = ""  # the enqueue moment: queued, or refused with its line


class Chaos:
    def __init__(self, work: Path, mount: Path, model: Path, files: list[Path], rng: random.Random) -> None:
        self.work = work
        self.mount = mount
        self.rng = rng
        self.files = list(files)
        self.fed = 0
        self.layout = new_base(mount / "base", model, consolidate=True)
        self.base = self.layout.root
        self.notify = NotifyListener(work / "notify.sock")
        self.log_path = work / "chaos.log"
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), "WATCHDOG_USEC": "30000000"}
        env.pop("WATCHDOG_PID", None)
        self.proc = subprocess.Popen(daemon_argv(self.base), stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env=env)
        self.episodes: list[Episode] = []

    # What the daemon is doing ---------------------------------------------------------------

    def wait(self, predicate, what: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise Problem(f"the daemon exited {self.proc.returncode} waiting for {what}")
            if time.monotonic() > deadline:
                raise Problem(f"timed out waiting for {what}")
            time.sleep(POLL_S)

    def metric_lines(self) -> int:
        """Step lines written so far (an item's evaluation line, "kind": "eval", is no step)."""
        total = 0
        for path in (self.base / "metrics").glob("*.jsonl") if (self.base / "metrics").exists() else []:
            total += sum(1 for line in path.read_bytes().splitlines() if line.strip() and b'"kind"' not in line)
        return total

    def staging(self, sub: str) -> bool:
        try:
            return any(n.startswith(".staging-") for n in os.listdir(self.base / sub))
        except FileNotFoundError:
            return False

    def items_known(self) -> int:
        from trainer.spool import queue

        counts = queue.counts(self.layout)
        return counts["pending"] + counts["active"] + counts["done"] + counts["failed"]

    def queue_busy(self) -> bool:
        from trainer.spool import queue

        return not queue.is_idle(self.layout)

    def idle(self) -> bool:
        """Nothing queued or training, and no version being written."""
        statuses = self.notify.statuses(0)
        return (not self.queue_busy() and not self.staging("models") and bool(statuses)
                and statuses[-1][1].startswith("idle"))

    # Feeding the files, in order ------------------------------------------------------------

    def feed(self, route: str | None = None) -> bool:
        """Queue the next file (trainctl enqueue or the inbox) and wait until it is an item."""
        if self.fed >= len(self.files):
            return False
        path = self.files[self.fed]
        route = route or self.rng.choice(["enqueue", "inbox"])
        if route == "enqueue":
            done = trainctl(self.base, "enqueue", str(path))
            if done.returncode != 0:
                raise Problem(f"trainctl enqueue failed: {done.stderr.strip()}")
        else:
            hidden = self.base / "inbox" / f".{path.name}"
            shutil.copy(path, hidden)
            os.rename(hidden, self.base / "inbox" / path.name)
        self.fed += 1
        self.wait(lambda: self.items_known() >= self.fed, f"{path.name} to be queued")
        return True

    def ensure_training(self) -> bool:
        """An item is training (fed if need be) and has trained a step since now; False when
        no file is left to feed."""
        while True:
            if not self.queue_busy() and not self.feed():
                return False
            before = self.metric_lines()
            self.wait(lambda: self.metric_lines() > before or not self.queue_busy(), "a step")
            if self.queue_busy():
                return True

    def drain(self) -> None:
        self.wait(lambda: not self.queue_busy(), "the queue to drain")

    # One fill -------------------------------------------------------------------------------

    def episode(self, kind: str, moment: str) -> Episode | None:
        episode = Episode(kind, moment)
        fill = FILLS[kind](self.mount)
        if not self._arrange(moment, kind, fill, episode):
            return None
        refused_at = time.monotonic()
        episode.landed = episode.landed or self._landed()
        # A daemon with nothing to write has nothing refused: an enqueue refused whole, a fill
        # that landed after the work it aimed at (then nothing is expected of the daemon).
        if moment == "enqueue":
            expect_block = episode.enqueue == "queued"  # then the new item meets the full disk
        else:
            expect_block = episode.landed != "idle"
        blocked_at = refused_at
        if expect_block:
            lines = self.metric_lines()
            blocked_at = self._until_status(lambda s: s.startswith("blocked"), refused_at, "STATUS=blocked")
            episode.blocked_s = round(blocked_at - refused_at, 3)
            episode.blocked_reason = next(s for t, s in self.notify.statuses(blocked_at) if s.startswith("blocked"))
            lines = max(lines, self.metric_lines())
            episode.steps_while_blocked = self._steps_while_blocked(lines, self.rng.uniform(0.5, 2.0))
        else:
            time.sleep(self.rng.uniform(0.5, 2.0))
        status = trainctl(self.base, "status", "--json")
        episode.status_liveness = orjson.loads(status.stdout)["daemon"]["liveness"] if status.stdout else "?"
        released_at = time.monotonic()
        if expect_block:
            pings = [blocked_at, *self.notify.pings(blocked_at, released_at), released_at]
            episode.watchdog_gap_s = round(max(b - a for a, b in zip(pings, pings[1:])), 3)
        fill.release()
        if expect_block:
            resumed_at = self._until_status(lambda s: not s.startswith("blocked"), time.monotonic(), "resuming")
            episode.resumed_s = round(resumed_at - released_at, 3)
        if moment == "enqueue" and episode.enqueue != "queued":
            self.fed -= 1
            self.feed("enqueue")  # the refused file, given again
        self.episodes.append(episode)
        return episode

    def _steps_while_blocked(self, lines: int, seconds: float) -> int:
        """Steps trained in the next ``seconds`` before the daemon says it resumed by itself.

        A blocked daemon may resume before the fill is released: when a write it retries
        succeeds (a metrics line appended into a page the file already had), or when what
        blocked it was optional (a snapshot refused mid-write is then postponed for lack of
        room, and training goes on until the next checkpoint needs room: docs/daemon.md). Its
        log says so ("takes writes again", "room again"); steps after that are not trained
        while blocked. The line of the step that resumed it comes a moment before that log
        line: hence the pause before the log is read."""
        log_start = self.log_path.stat().st_size
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            now = self.metric_lines()
            if now > lines:
                time.sleep(0.2)
                with open(self.log_path, "rb") as fh:
                    fh.seek(log_start)
                    said = fh.read()
                if b"takes writes again" in said or b"room again" in said:
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    return 0
                return self.metric_lines() - lines
            time.sleep(POLL_S * 5)
        return self.metric_lines() - lines

    def _arrange(self, moment: str, kind: str, fill: Fill, episode: Episode) -> bool:
        """Bring the daemon to ``moment`` and take the disk away there; False if it cannot be
        reached any more (no file left to train)."""
        while moment in ("step", "checkpoint", "snapshot"):
            if not self.ensure_training():
                return False
            if moment == "step":
                time.sleep(self.rng.uniform(0, 0.3))
            else:
                if moment == "snapshot":
                    self._make_snapshot_due()
                sub = "snapshots" if moment == "snapshot" else "checkpoints"
                self.wait(lambda: self.staging(sub) or not self.queue_busy(), f"a {moment} being written")
            if self.queue_busy():  # else the item ended first: again, with the next one
                self._take_away(fill, kind, frozen=moment != "step")
                return True
        if moment == "consolidation":
            while True:  # a consolidation starts once the queue drains after new items
                if not self.queue_busy() and not self.feed():
                    return False
                self.wait(lambda: self.staging("models") or self.idle(), "a consolidation")
                if self.staging("models"):
                    self._take_away(fill, kind, frozen=True)
                    return True
        if self.fed >= len(self.files):
            return False
        self.drain()
        self.wait(self.idle, "the daemon to be idle")
        path = self.files[self.fed]
        if moment == "intake":
            hidden = self.base / "inbox" / f".{path.name}"
            shutil.copy(path, hidden)
            if kind == "readonly":  # nothing can be renamed on a read-only disk: dropped first
                os.rename(hidden, self.base / "inbox" / path.name)
                fill.start()
            else:
                fill.start()
                os.rename(hidden, self.base / "inbox" / path.name)
            self.fed += 1
            return True
        # enqueue: the disk is taken away as soon as trainctl enqueue has made its staging dir
        # (trainctl stopped meanwhile, as the daemon is for a checkpoint)
        enqueuer = subprocess.Popen([sys.executable, "-m", "ctl", "--base-dir", str(self.base), "enqueue", str(path)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        while enqueuer.poll() is None and not any(n.startswith("batch-") for n in os.listdir(self.base / "tmp")):
            pass  # no sleep: the staging dir of a small file lives a few milliseconds
        if enqueuer.poll() is None:
            episode.landed = "enqueue"
        if kind != "readonly" and enqueuer.poll() is None:
            os.kill(enqueuer.pid, signal.SIGSTOP)
            try:
                fill.start()
            finally:
                os.kill(enqueuer.pid, signal.SIGCONT)
        else:
            fill.start()
        out, err = enqueuer.communicate(timeout=WAIT_S)
        self.fed += 1
        if enqueuer.returncode == 0:
            episode.enqueue = "queued"
            if "warning" in err or "Traceback" in err:
                raise Problem(f"trainctl enqueue said: {err.strip()}")
        else:
            lines = err.strip().splitlines()
            episode.enqueue = f"refused (exit {enqueuer.returncode}): {err.strip()}"
            if enqueuer.returncode != 1 or len(lines) != 1 or "Traceback" in err or "try again" not in lines[0]:
                raise Problem(f"trainctl enqueue on a full disk: {episode.enqueue}")
            if any(n.startswith("batch-") for n in os.listdir(self.base / "tmp")):
                raise Problem("a refused enqueue left its staging behind")
        return True

    def _take_away(self, fill: Fill, kind: str, *, frozen: bool) -> None:
        """Take the disk away; ``frozen``: with the daemon stopped (SIGSTOP) meanwhile, so the
        rest of a write that lasts a fraction of a second (a checkpoint, a snapshot, a version)
        meets the full disk. Not for a remount, which waits for files open for writing to close."""
        if not frozen or kind == "readonly":
            fill.start()
            return
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            fill.start()
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def _make_snapshot_due(self) -> None:
        """As a new day would: the last snapshot dated yesterday, today's not taken yet."""
        from trainer.spool.fsutil import write_atomic

        shutil.rmtree(self.base / "snapshots" / date.today().isoformat(), ignore_errors=True)
        record = self.base / "run" / "housekeeping.json"
        state = orjson.loads(record.read_bytes()) if record.exists() else {}
        state["last_snapshot"] = (date.today() - timedelta(days=1)).isoformat()
        write_atomic(self.base / "tmp", record, orjson.dumps(state))

    def _landed(self) -> str:
        """What the base dir shows when the disk refuses writes."""
        from trainer.spool import queue

        for sub, what in (("checkpoints", "checkpoint write"), ("snapshots", "snapshot"), ("models", "consolidation")):
            if self.staging(sub):
                return what
        if queue.inbox_waiting(self.layout):
            return "intake"
        if any(n.startswith("batch-") for n in os.listdir(self.base / "tmp")):
            return "enqueue"
        counts = queue.counts(self.layout)
        if counts["active"]:
            return "training"
        return "pending" if counts["pending"] else "idle"

    def _until_status(self, accept, since: float, what: str) -> float:
        found: list[float] = []

        def seen() -> bool:
            found[:] = [t for t, s in self.notify.statuses(since) if accept(s)]
            return bool(found)
        self.wait(seen, what)
        return found[0]

    # The end -----------------------------------------------------------------------------

    def finish(self) -> int:
        while self.feed():
            pass
        self.drain()
        self.wait(self.idle, "the daemon to be idle")
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(120)
        self._log.close()
        self.notify.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if not self._log.closed:
            self._log.close()


def trainctl(base: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctl", "--base-dir", str(base), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=WAIT_S)


# --- the checks ------------------------------------------------------------------------

def final_state(base: Path) -> dict:
    """sha256 of the newest checkpoint's weights, optimizer and RNG, and its step and token counts
    (item ids differ between the two runs, so train_state.json is compared by its numbers)."""
    from trainer.train.checkpoint import CheckpointStore

    newest = CheckpointStore(base / "checkpoints").committed()[-1]
    files = newest.manifest["files"]
    state = orjson.loads((newest.path / "train_state.json").read_bytes())
    return {**{name: files[name]["sha256"] for name in ("trainable.safetensors", "optimizer.pt", "rng.pt")},
            **{key: state[key] for key in ("global_step", "tokens_seen", "loss_window", "items_completed")}}


def losses(base: Path) -> tuple[dict[int, float], list[int], int]:
    """Loss per global step, every global step written (in order), and unreadable lines."""
    from trainer.spool import metrics
    from trainer.spool.layout import Layout

    layout = Layout(base)
    by_step, written, torn = {}, [], 0
    for path in sorted((base / "metrics").glob("*.jsonl")):
        log = metrics.read(layout, path.stem)
        torn += log.unreadable_lines
        for record in log.steps:
            by_step[record["global_step"]] = record["loss"]
            written.append(record["global_step"])
    return by_step, written, torn


def check(chaos: Chaos, straight: Path, final_code: int) -> list[str]:
    from trainer.spool import events, queue
    from trainer.spool.layout import Layout
    from trainer.states import ItemState

    problems = []
    base = chaos.base
    if final_code != 0:
        problems.append(f"the daemon exited {final_code} at the end")
    text = chaos.log_path.read_text(errors="replace")
    for needle in ("error in the main loop", "Traceback", "event log: not recorded"):
        if needle in text:
            problems.append(f"the daemon's log has {needle!r}")
    for episode in chaos.episodes:
        if episode.steps_while_blocked:
            problems.append(f"{episode.kind}/{episode.moment}: {episode.steps_while_blocked} steps trained "
                            f"while blocked")
        if episode.status_liveness not in ("running", "unknown"):
            problems.append(f"{episode.kind}/{episode.moment}: trainctl status said {episode.status_liveness}")
    layout = Layout(base)
    log = events.read(layout)
    if log.unreadable_lines:
        problems.append(f"{log.unreadable_lines} unreadable lines in events.jsonl")
    done = [e["id"] for e in log.events if e["event"] == "done"]
    if len(done) != len(set(done)) or len(done) != len(chaos.files):
        problems.append(f"{len(done)} done events ({len(set(done))} items) for {len(chaos.files)} files")
    counted = [e for e in log.events if e["event"] == "requeued" and e.get("counted")]
    if counted:
        problems.append(f"attempts burned: {counted}")
    items = queue.list_items(layout, list(ItemState))
    if any(item.state is not ItemState.DONE for item in items):
        problems.append(f"items not done: {[(i.id, i.state.value) for i in items if i.state is not ItemState.DONE]}")
    if any(item.meta is None or item.meta.attempts or item.meta.errors for item in items):
        problems.append("an item has attempts or errors recorded")
    reference, _, _ = losses(straight)
    by_step, written, torn = losses(base)
    if torn:
        problems.append(f"{torn} torn lines in metrics/")
    if len(written) != len(set(written)):
        problems.append("a step's metrics line was written twice (a step trained again)")
    if by_step != reference:
        problems.append("the steps or their losses differ from the straight run's")
    want, got = final_state(straight), final_state(base)
    if want != got:
        problems.append(f"final state differs from the straight run: {[k for k in want if want[k] != got.get(k)]}")
    left = [f"tmp/{n}" for n in os.listdir(base / "tmp")]
    for sub in ("checkpoints", "snapshots", "models"):
        if (base / sub).exists():
            left += [f"{sub}/{n}" for n in os.listdir(base / sub) if n.startswith((".staging-", ".deleting-"))]
    if left:
        problems.append(f"debris left: {left}")
    return problems


# --- the whole experiment ----------------------------------------------------------------

def plan(rng: random.Random, fills: int, cycle: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if cycle:
        return [cycle[n % len(cycle)] for n in range(fills)]
    return [(rng.choice(KINDS), rng.choice(MOMENTS)) for _ in range(fills)]


def experiment(work: Path, model: Path, *, items: int, records: int, fills: int, seed: int,
               cycle: list[tuple[str, str]] | None = None) -> dict:
    """The straight run, then the daemon on a tmpfs that is taken away ``fills`` times."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise SystemExit("needs root and mount (a tmpfs)")
    files = make_files(work, items, records, seed)
    started = time.monotonic()
    straight = run_straight(work, model, files)
    straight_s = time.monotonic() - started
    mount = work / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", TMPFS, "tmpfs", str(mount)], check=True)
    chaos = None
    rng = random.Random(seed)
    problems: list[str] = []
    try:
        chaos = Chaos(work, mount, model, files, rng)
        started = time.monotonic()
        for kind, moment in plan(rng, fills, cycle):
            if chaos.episode(kind, moment) is None and chaos.fed >= len(files):
                break  # nothing left to train: the report says how many fills landed
        code = chaos.finish()
        chaos_s = time.monotonic() - started
        problems = check(chaos, straight, code)
    except Problem as exc:
        problems = [str(exc)]
        chaos_s = 0.0
    finally:
        if chaos is not None:
            chaos.kill()
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], capture_output=True)
        subprocess.run(["umount", "-l", str(mount)], check=True)
    return report(chaos, problems, straight_s=straight_s, chaos_s=chaos_s)


def report(chaos: Chaos | None, problems: list[str], *, straight_s: float, chaos_s: float) -> dict:
    episodes = chaos.episodes if chaos else []
    return {
        "ok": not problems,
        "problems": problems,
        "fills": len(episodes),
        "fills_by_kind": {k: sum(1 for e in episodes if e.kind == k) for k in KINDS},
        "fills_by_moment": {m: sum(1 for e in episodes if e.moment == m) for m in MOMENTS},
        "landed": {w: sum(1 for e in episodes if e.landed == w) for w in sorted({e.landed for e in episodes})},
        "blocked_after_refusal_s": _spread([e.blocked_s for e in episodes if e.blocked_s is not None]),
        "longest_watchdog_gap_while_blocked_s": max((e.watchdog_gap_s or 0 for e in episodes), default=None),
        "resumed_after_release_s": _spread([e.resumed_s for e in episodes if e.resumed_s is not None]),
        "disk_check_seconds": DISK_CHECK_S,
        "status_while_blocked": {v: sum(1 for e in episodes if e.status_liveness == v)
                                 for v in sorted({e.status_liveness for e in episodes})},
        "enqueue_outcomes": [e.enqueue for e in episodes if e.moment == "enqueue"],
        "blocked_reasons": sorted({_shape(e.blocked_reason) for e in episodes if e.blocked_reason}),
        "items": len(chaos.files) if chaos else 0,
        "straight_run_s": round(straight_s, 1),
        "chaos_run_s": round(chaos_s, 1),
    }


def _shape(reason: str) -> str:
    """A blocked reason without its paths and numbers, to group them."""
    import re

    reason = re.sub(r"/\S+", "PATH", reason)
    return re.sub(r"\d[\d,.]*", "N", reason)


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    return {"n": len(values), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--records", type=int, default=120, help="records per file")
    parser.add_argument("--fills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="work in this dir and keep it (default: a temp dir, removed)")
    args = parser.parse_args()
    from chaos_common import run_on_demo_model

    run_on_demo_model("chaos-disk-", args.keep, lambda work, model: experiment(
        work, model, items=args.items, records=args.records, fills=args.fills, seed=args.seed))


if __name__ == "__main__":
    main()
