"""Random kill -9 against the real daemon, restarted after every kill, against a straight run.

    .venv/bin/python bench/chaos_kill.py [--items 20] [--records 40] [--kills 50] [--seed 1] [--keep DIR]

Two copies of one base dir (the same items under the same ids) on the tiny demo model, CPU,
``train.deterministic = true``. One trains straight through. The other is killed with
SIGKILL ``--kills`` times, restarted after each kill, and finally run until idle. Each kill
aims at one kind of moment, chosen at random (seeded):

  step        a random instant while training, inside or between optimizer steps
  checkpoint  as soon as (or just after) a checkpoint's staging dir appears: mid-write
  claim       as soon as an item's "claimed" event is logged: validation, survey, first step
  snapshot    during the daily snapshot (the harness makes one due, as a new day would, by
              dating the last one yesterday in run/housekeeping.json)
  recovery    while the restarted daemon says "starting": requeue, sweep, checkpoint
              verification, model load
  syscall     on entry to the Nth rename() or fsync() since the start, by strace's fault
              injection (skipped without strace): the instant before a claim, a checkpoint
              commit, LATEST, a meta or state file replace, a done or requeue move

No fault-injection code is in the daemon: the harness watches the base dir (or lets strace
count syscalls) and kills from outside. What it checks, failing with exit 1 if any is wrong:

- every item is done exactly once: one "done" event each in the event log, none lost;
- no checkpoint that fails verification is ever loaded: after every kill each committed
  checkpoint is verified here, and the checkpoint the next daemon restores must be one that
  passed (and the newest on disk); no kill may leave a committed checkpoint corrupt;
- no debris: tmp/ empty, no .staging-* in checkpoints/, snapshots/ or models/ at the end;
- no example is trained twice into the weights: no step at or below the restored
  checkpoint's is trained again, every step's loss equals the straight run's for that global
  step, and the final weights, optimizer state and TrainState are bit-identical to it.

Prints a JSON report (recovery times: spawn to ready, spawn to the first step trained).
The quick version is tests/test_chaos_kill.py.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
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
min_free_bytes = 1048576
retry_delay_seconds = 0.2
consolidate_when_idle = false
[snapshot]
at = "00:00"
[spool]
max_attempts = 1000
"""

MODES = ("step", "checkpoint", "claim", "snapshot", "recovery", "syscall")
POLL_S = 0.002
RESTORED = re.compile(r"restored checkpoint (\S+) \(step (\d+)\)")
TRIGGER_TIMEOUT_S = 60.0


# --- the base dirs -----------------------------------------------------------------------

def make_bases(work: Path, model: Path, items: int, records: int, seed: int) -> tuple[Path, Path]:
    """A template base dir with ``items`` queued, copied twice: (straight, chaos)."""
    from trainer.config import default_config_toml, load_config
    from trainer.demo.sample_data import write_sample_chat
    from trainer.intake.enqueue import enqueue
    from trainer.spool.layout import init_base

    layout, _ = init_base(work / "template", default_config_toml())
    layout.config_file.write_text(CONFIG)
    shutil.copytree(model, layout.root / "models" / "base")
    limits = load_config(layout.config_file).spool
    data = work / "data"
    data.mkdir()
    for n in range(items):
        path = write_sample_chat(data / f"item{n:03d}.jsonl", records, seed=seed * 1000 + n)
        enqueue(layout, path, limits=limits)
    straight, chaos = work / "straight", work / "chaos"
    shutil.copytree(layout.root, straight, symlinks=True)
    shutil.copytree(layout.root, chaos, symlinks=True)
    return straight, chaos


def queue_empty(base: Path) -> bool:
    return not any(os.listdir(base / sub) for sub in ("pending/high", "pending/normal", "pending/low", "active"))


def daemon_argv(base: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "trainer.daemon", "run", "--base-dir", str(base), *args]


def read_state(base: Path) -> dict:
    try:
        state = orjson.loads((base / "run" / "daemon.json").read_bytes())
        return state if isinstance(state, dict) else {}
    except (OSError, orjson.JSONDecodeError):
        return {}


def events(base: Path) -> list[dict]:
    from trainer.spool import events as event_log
    from trainer.spool.layout import Layout

    return event_log.read(Layout(base)).events


def metric_lines(base: Path, kind: str | None = None) -> dict[str, list[dict]]:
    """Every step line (or, with ``kind``, every line of that kind: "eval"), per item, in the
    order written."""
    found = {}
    for path in sorted((base / "metrics").glob("*.jsonl")) if (base / "metrics").exists() else []:
        lines = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        found[path.stem] = [r for r in lines if r.get("kind") == kind]
    return found


def eval_numbers(base: Path) -> dict[str, list[dict]]:
    """Each item's held-out evaluations (every line, a repeat after a crash included), timeless."""
    return {item: [{k: v for k, v in r.items() if k != "t"} for r in rows]
            for item, rows in metric_lines(base, "eval").items()}


def final_checkpoint(base: Path) -> dict:
    """sha256 of each file of the newest checkpoint (what the daemon would load next)."""
    from trainer.train.checkpoint import CheckpointStore

    newest = CheckpointStore(base / "checkpoints").committed()[-1]
    return {name: entry["sha256"] for name, entry in newest.manifest["files"].items()}


def debris(base: Path) -> list[str]:
    """Leftovers of interrupted writes: tmp/ entries and staging dirs and files."""
    found = [f"tmp/{n}" for n in os.listdir(base / "tmp")]
    for sub in ("checkpoints", "snapshots", "models"):
        directory = base / sub
        if directory.exists():
            found += [f"{sub}/{n}" for n in os.listdir(directory)
                      if n.startswith((".staging-", ".deleting-")) or n.endswith(".tmp")]
    return sorted(found)


def run_straight(base: Path, log: Path) -> float:
    started = time.monotonic()
    with open(log, "wb") as out:
        code = subprocess.run(daemon_argv(base, "--exit-when-idle"), stdout=out, stderr=subprocess.STDOUT,
                              cwd=REPO, timeout=3600).returncode
    if code != 0:
        raise SystemExit(f"the straight run exited {code}: see {log}")
    return time.monotonic() - started


# --- one killed run ----------------------------------------------------------------------

@dataclass
class Run:
    """One daemon start in the chaos base dir and how it ended."""

    index: int
    mode: str
    spawned_wall: float = 0.0
    ready_s: float | None = None  # spawn to ready (recovery + model load)
    first_step_s: float | None = None  # spawn to the first optimizer step
    killed: bool = False
    phase: str = ""  # what the base dir showed at the kill
    target: str = ""  # the syscall, for syscall kills
    debris_at_kill: list[str] = field(default_factory=list)
    restored: tuple[str, int] | None = None
    new_lines_baseline: dict[str, int] = field(default_factory=dict)  # metrics lines before it
    new_lines: list[dict] = field(default_factory=list)  # metrics lines it wrote
    exit_code: int | None = None
    wall_s: float = 0.0  # spawn to exit


class Chaos:
    def __init__(self, base: Path, runs_dir: Path, rng: random.Random) -> None:
        self.base = base
        self.runs_dir = runs_dir
        self.rng = rng
        self.runs: list[Run] = []
        self.valid_after_kill: list[set[str]] = []  # names verified after each kill
        self.newest_after_kill: list[tuple[str, int] | None] = []
        self.corrupt_committed: list[str] = []
        self.strace = shutil.which("strace")
        self.recovery_window = 1.0  # seconds a daemon spends "starting"; learned as it goes

    # Kill targets -------------------------------------------------------------------------

    def _wait(self, proc, predicate, timeout=TRIGGER_TIMEOUT_S) -> bool:
        """Poll ``predicate``; False if the daemon exited, the time ran out or nothing is left
        to train (then the moment will never come)."""
        deadline = time.monotonic() + timeout
        polls = 0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if predicate():
                return True
            polls += 1
            if polls % 50 == 0 and queue_empty(self.base):
                return False
            time.sleep(POLL_S)
        return False

    def _staging(self, sub: str) -> bool:
        try:
            return any(n.startswith(".staging-") for n in os.listdir(self.base / sub))
        except FileNotFoundError:
            return False

    def _trigger(self, run: Run, proc, pid_of) -> None:
        """Block until the moment ``run.mode`` aims at (or a timeout: then kill anyway)."""
        rng = self.rng
        if run.mode == "syscall":
            self._wait(proc, lambda: False)  # strace kills it; if the count is never reached, we do
            return
        if run.mode == "recovery":
            if self._wait(proc, lambda: read_state(self.base).get("pid") == pid_of()
                          and read_state(self.base).get("state") == "starting"):
                time.sleep(rng.uniform(0, self.recovery_window))
            return
        if run.mode == "claim":
            claims = sum(e["event"] == "claimed" for e in events(self.base))

            def claimed() -> bool:
                return sum(e["event"] == "claimed" for e in events(self.base)) > claims
            if self._wait(proc, claimed):
                time.sleep(rng.choice([0.0, rng.uniform(0, 0.3)]))
            return
        if run.mode == "checkpoint":
            if self._wait(proc, lambda: self._staging("checkpoints")):
                time.sleep(rng.choice([0.0, rng.uniform(0, 0.03)]))
            return
        if run.mode == "snapshot":
            if self._wait(proc, lambda: self._staging("snapshots")):
                time.sleep(rng.uniform(0, 0.2))
            return
        # step: a random instant once training has produced a step
        before = sum(run.new_lines_baseline.values())
        if self._wait(proc, lambda: _total_lines(self.base) > before):
            time.sleep(rng.uniform(0, 0.8))

    def _prepare(self, run: Run) -> list[str]:
        if run.mode == "snapshot":
            # As a new day would: the last snapshot dated yesterday, today's not taken yet.
            today = date.today().isoformat()
            shutil.rmtree(self.base / "snapshots" / today, ignore_errors=True)
            state_file = self.base / "run" / "housekeeping.json"
            state = orjson.loads(state_file.read_bytes()) if state_file.exists() else {}
            state["last_snapshot"] = (date.today() - timedelta(days=1)).isoformat()
            state_file.write_bytes(orjson.dumps(state))
        argv = daemon_argv(self.base)
        if run.mode == "syscall":
            # No --seccomp-bpf: with it, strace 6.1 traced the calls but never injected the signal.
            call = self.rng.choice(["rename", "fsync"])
            nth = self.rng.randint(1, 30 if call == "rename" else 60)
            run.target = f"{call}#{nth}"
            trace = self.runs_dir / f"{run.index:03d}.strace"
            argv = [self.strace, "-f", "-qq", "-o", str(trace), "-e", f"trace={call}",
                    "-e", f"inject={call}:signal=KILL:when={nth}", *argv]
        return argv

    # One run ------------------------------------------------------------------------------

    def run_once(self, mode: str) -> Run:
        if mode == "syscall" and not self.strace:
            mode = "step"
        run = Run(len(self.runs), mode)
        run.new_lines_baseline = {k: len(v) for k, v in metric_lines(self.base).items()}
        argv = self._prepare(run)
        log = open(self.runs_dir / f"{run.index:03d}.log", "wb")
        run.spawned_wall = time.time()
        spawned = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        pid_of = _daemon_pid(proc, wrapped=mode == "syscall")
        watcher = _ReadyWatcher(self.base, pid_of, spawned)
        try:
            self._trigger_with(run, proc, pid_of, watcher)
            pid = pid_of()
            if proc.poll() is None and pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # strace's kill got there first
            run.killed = True
            run.phase, run.debris_at_kill = self._observe(pid)
            run.exit_code = proc.wait(60)
            run.wall_s = time.monotonic() - spawned
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            log.close()
        run.ready_s = watcher.ready_s
        if run.ready_s is not None and watcher.starting_s is not None:
            self.recovery_window = max(0.1, run.ready_s - watcher.starting_s)  # the last one seen
        self._after(run)
        self.runs.append(run)
        return run

    def _trigger_with(self, run, proc, pid_of, watcher) -> None:
        watcher.start()
        try:
            self._trigger(run, proc, pid_of)
        finally:
            watcher.stop()

    def _observe(self, pid) -> tuple[str, list[str]]:
        """What the base dir shows right after the kill (nothing changes it now)."""
        state = read_state(self.base)
        leftovers = debris(self.base)
        if state.get("pid") != pid:
            phase = "starting (imports)"
        elif state.get("state") == "starting":
            phase = "recovery"
        elif any(n.startswith("checkpoints/.staging-") for n in leftovers):
            phase = "checkpoint write"
        elif any(n.startswith("snapshots/.staging-") for n in leftovers):
            phase = "snapshot"
        elif leftovers:
            phase = "publishing a file"
        else:
            phase = state.get("state", "?")
        return phase, leftovers

    def _after(self, run: Run) -> None:
        """After the kill: verify every committed checkpoint, and read what the run did."""
        from trainer.train.checkpoint import CheckpointStore, CorruptCheckpoint, verify

        valid, newest = set(), None
        for checkpoint in CheckpointStore(self.base / "checkpoints").committed():
            try:
                verify(checkpoint.path)
            except CorruptCheckpoint as exc:
                self.corrupt_committed.append(f"{checkpoint.path.name}: {exc}")
                continue
            valid.add(checkpoint.path.name)
            newest = (checkpoint.path.name, checkpoint.step)
        self.valid_after_kill.append(valid)
        self.newest_after_kill.append(newest)
        text = (self.runs_dir / f"{run.index:03d}.log").read_text(errors="replace")
        if m := RESTORED.search(text):
            run.restored = (m.group(1), int(m.group(2)))
        lines = metric_lines(self.base)
        for item, rows in lines.items():
            run.new_lines += rows[run.new_lines_baseline.get(item, 0):]
        if run.new_lines:
            first = min(datetime.fromisoformat(r["t"]).timestamp() for r in run.new_lines)
            run.first_step_s = first - run.spawned_wall
        if run.mode == "syscall":
            trace = self.runs_dir / f"{run.index:03d}.strace"
            calls = trace.read_text(errors="replace").splitlines() if trace.exists() else []
            last = next((c for c in reversed(calls) if "(" in c and "resumed" not in c), "")
            run.target += " " + _describe_call(last)


class _ReadyWatcher:
    """Notes when the daemon first reports a state other than "starting" (a thread, so the
    kill trigger is not slowed down by it)."""

    def __init__(self, base: Path, pid_of, spawned: float) -> None:
        import threading

        self.base, self.pid_of, self.spawned = base, pid_of, spawned
        self.starting_s: float | None = None
        self.ready_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            state = read_state(self.base)
            pid = self.pid_of()
            if not pid or state.get("pid") != pid:
                continue
            if self.starting_s is None:
                self.starting_s = time.monotonic() - self.spawned
            if state.get("state") != "starting":
                self.ready_s = time.monotonic() - self.spawned
                return


def _daemon_pid(proc, *, wrapped: bool):
    """A function giving the daemon's pid: the process itself, or strace's child."""
    if not wrapped:
        return lambda: proc.pid
    found: list[int] = []

    def pid() -> int | None:
        if not found:
            try:
                children = [int(p) for p in
                            Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
            except OSError:
                children = []
            if children:
                found.append(children[0])
        return found[0] if found else None
    return pid


def _total_lines(base: Path) -> int:
    total = 0
    for path in (base / "metrics").glob("*.jsonl") if (base / "metrics").exists() else []:
        with open(path, "rb") as fh:
            total += fh.read().count(b"\n")
    return total


def _describe_call(line: str) -> str:
    """Name what an interrupted rename/fsync was about, from strace's line."""
    if "rename(" in line:
        paths = re.findall(r'"([^"]*)"', line)
        dest = paths[1] if len(paths) > 1 else ""
        src = paths[0] if paths else ""
        for needle, what in (("/active/", "claim"), ("/done/", "done move"), ("daemon.json", "state file"),
                             ("meta.json", "item meta"), ("/LATEST", "LATEST"), ("/checkpoints/step-",
                             "checkpoint commit"), ("/snapshots/", "snapshot publish"),
                             ("housekeeping.json", "housekeeping file"), ("/failed/", "fail move")):
            if needle in dest:
                return f"before the {what}"
        if "/pending/" in dest and "/active/" in src:
            return "before a requeue"
        return f"before rename to {Path(dest).name}" if dest else "rename"
    if "fsync(" in line:
        return "before an fsync"
    return ""


# --- the whole experiment ----------------------------------------------------------------

def experiment(work: Path, model: Path, *, items: int, records: int, kills: int, seed: int,
               modes: tuple[str, ...] = MODES, cycle: bool = False) -> dict:
    """The straight run, ``kills`` killed runs, the final run, and the report. ``cycle``: take
    the modes in turn instead of at random (a short run then hits each of them)."""
    straight, chaos_base = make_bases(work, model, items, records, seed)
    runs_dir = work / "runs"
    runs_dir.mkdir()
    straight_s = run_straight(straight, work / "straight.log")
    rng = random.Random(seed)
    chaos = Chaos(chaos_base, runs_dir, rng)
    started = time.monotonic()
    while len(chaos.runs) < kills:
        if queue_empty(chaos_base):
            break  # everything trained before the kills ran out: the report says how many
        chaos.run_once(modes[len(chaos.runs) % len(modes)] if cycle else rng.choice(modes))
    final_log = runs_dir / "final.log"
    final = Run(len(chaos.runs), "final", spawned_wall=time.time())
    final.new_lines_baseline = {k: len(v) for k, v in metric_lines(chaos_base).items()}
    with open(final_log, "wb") as out:
        code = subprocess.run(daemon_argv(chaos_base, "--exit-when-idle"), stdout=out, stderr=subprocess.STDOUT,
                              cwd=REPO, timeout=3600).returncode
    text = final_log.read_text(errors="replace")
    if m := RESTORED.search(text):
        final.restored = (m.group(1), int(m.group(2)))
    chaos_s = time.monotonic() - started
    return report(straight, chaos_base, chaos, final, final_code=code, straight_s=straight_s, chaos_s=chaos_s)


def report(straight: Path, base: Path, chaos: Chaos, final: Run, *, final_code: int, straight_s: float,
           chaos_s: float) -> dict:
    runs = chaos.runs
    problems: list[str] = []
    if final_code != 0:
        problems.append(f"the final run exited {final_code}")

    # Every item done exactly once, by the event log.
    log = events(base)
    queued = [e["id"] for e in log if e["event"] == "enqueued"]
    done = [e["id"] for e in log if e["event"] == "done"]
    lost = [i for i in queued if i not in done]
    twice = sorted({i for i in done if done.count(i) > 1})
    if lost:
        problems.append(f"items never done: {lost}")
    if twice:
        problems.append(f"items done more than once: {twice}")
    on_disk = sorted(os.listdir(base / "done"))
    if on_disk != sorted(queued):
        problems.append("done/ does not hold exactly the queued items")

    # Only verified checkpoints loaded, each the newest on disk at the kill before.
    loaded_unverified, resumed_newest, resumed = [], 0, 0
    for n, run in enumerate([*runs[1:], final]):
        if run.restored is None:
            continue
        resumed += 1
        if run.restored[0] not in chaos.valid_after_kill[n]:
            loaded_unverified.append(run.restored[0])
        if chaos.newest_after_kill[n] and run.restored == chaos.newest_after_kill[n]:
            resumed_newest += 1
    if loaded_unverified:
        problems.append(f"loaded checkpoints that had not verified: {loaded_unverified}")
    if resumed_newest != resumed:
        problems.append(f"only {resumed_newest} of {resumed} restarts resumed from the newest checkpoint on disk")
    if chaos.corrupt_committed:
        problems.append(f"kills left committed checkpoints corrupt: {chaos.corrupt_committed}")
    quarantined = os.listdir(base / "checkpoints" / "quarantine") if (base / "checkpoints" / "quarantine").exists() \
        else []
    if quarantined:
        problems.append(f"checkpoints quarantined: {quarantined}")

    # No debris once the last daemon is done.
    left = debris(base)
    if left:
        problems.append(f"debris left behind: {left}")

    # No example trained twice into the weights.
    reference = {r["global_step"]: r["loss"] for rows in metric_lines(straight).values() for r in rows}
    all_lines = [r for rows in metric_lines(base).values() for r in rows]
    differing = sorted({r["global_step"] for r in all_lines if reference.get(r["global_step"]) != r["loss"]})
    if differing:
        problems.append(f"steps whose loss differs from the straight run: {differing[:10]}")
    if {r["global_step"] for r in all_lines} != set(reference):
        problems.append("the steps trained differ from the straight run's")
    duplicates = 0  # steps trained again although the checkpoint loaded already held them
    seen: set[int] = set()
    redone = 0
    final.new_lines = [r for item, rows in metric_lines(base).items()
                       for r in rows[final.new_lines_baseline.get(item, 0):]]
    for run in [*runs, final]:
        floor = run.restored[1] if run.restored else 0
        duplicates += sum(1 for r in run.new_lines if r["global_step"] <= floor)
        redone += sum(1 for r in run.new_lines if r["global_step"] in seen)
        seen |= {r["global_step"] for r in run.new_lines}
    if duplicates:
        problems.append(f"{duplicates} steps trained again below the restored checkpoint")
    # Evaluation too: each item's held-out numbers bitwise those of the straight run, however
    # often a kill made it evaluate again.
    straight_evals, chaos_evals = eval_numbers(straight), eval_numbers(base)
    evals_identical = set(straight_evals) == set(chaos_evals) and all(
        all(r == straight_evals[item][0] for r in rows) if rows else not straight_evals[item]
        for item, rows in chaos_evals.items())
    if not evals_identical:
        problems.append("held-out eval numbers differ from the straight run's")
    want, got = final_checkpoint(straight), final_checkpoint(base)
    identical = {name: want.get(name) == got.get(name) for name in want}
    if not all(identical.values()):
        problems.append(f"final checkpoint differs from the straight run: {identical}")

    ready = [r.ready_s for r in runs[1:] if r.ready_s is not None]
    first = [r.first_step_s for r in runs[1:] if r.first_step_s is not None and r.restored is not None]
    return {
        "ok": not problems,
        "problems": problems,
        "eval_identical": evals_identical,
        "items": len(queued),
        "steps": max(reference),
        "kills": sum(1 for r in runs if r.killed),
        "kills_by_mode": {m: sum(1 for r in runs if r.mode == m) for m in MODES},
        "kills_by_phase": {p: sum(1 for r in runs if r.phase == p) for p in sorted({r.phase for r in runs})},
        "syscall_targets": sorted(r.target for r in runs if r.mode == "syscall"),
        "kills_leaving_debris": sum(1 for r in runs if r.debris_at_kill),
        "items_done_once": len(queued) - len(lost) - len(twice),
        "items_lost": len(lost),
        "restarts_resumed_from_a_checkpoint": resumed,
        "resumed_from_newest_checkpoint": resumed_newest,
        "steps_redone_after_kills": redone,
        "duplicated_steps_below_restored_checkpoint": duplicates,
        "loaded_unverified_checkpoints": len(loaded_unverified),
        "corrupt_committed_checkpoints": len(chaos.corrupt_committed),
        "debris_left": left,
        "final_files_identical": identical,
        "recovery_to_ready_s": _spread(ready),
        "recovery_to_first_step_s": _spread(first),
        "runs": [f"{r.mode}: {r.phase}{' ' + r.target if r.target else ''}, {len(r.new_lines)} steps, "
                 f"{r.wall_s:.1f} s" for r in runs],
        "straight_run_s": round(straight_s, 1),
        "chaos_run_s": round(chaos_s, 1),
    }


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    return {"n": len(values), "median": round(statistics.median(values), 2), "max": round(max(values), 2),
            "min": round(min(values), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--records", type=int, default=40, help="records per item")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="work in this dir and keep it (default: a temp dir, removed)")
    args = parser.parse_args()
    from chaos_common import run_on_demo_model

    run_on_demo_model("chaos-kill-", args.keep, lambda work, model: experiment(
        work, model, items=args.items, records=args.records, kills=args.kills, seed=args.seed))


if __name__ == "__main__":
    main()
