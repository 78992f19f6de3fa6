"""The daemon's own costs, measured against the engine alone.

    .venv/bin/python bench/bench_daemon.py [--items 4] [--records 600] [--rounds 6] [--pickups 10]
                                           [--only-overhead]

- overhead: the same items trained through the daemon (queued, model already loaded: first
  claim to last done) against the engine called directly (prepare + train), same tiny model,
  data and checkpoint cadence, each side in a fresh process. Rounds alternate which side goes
  first (AB BA AB ...), so a drift in the machine's speed hits both halves of a round alike;
  the median of the per-round ratios is the figure;
- breakdown: the daemon run in this process with timers around its own work (claim,
  re-validation, state writes, control checks, ...), against the engine's compute in the
  same run: the overhead measured directly, with no second run to compare against;
- recovery: kill -9 mid-training, restart; time from the kill to the first training step
  after the restart, minus the model load (a fresh process importing torch and transformers
  and loading the weights, measured on its own);
- pickup latency: `trainctl enqueue` on an idle daemon to the claim (event log times).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIG = """
[train]
max_length = 256
micro_batch_size = 8
learning_rate = 0.001
warmup_steps = 10
# One CPU thread: with two threads on two cores, any other activity stalls the OpenMP
# barriers and one run differs from the next by tens of percent; with one, by a few.
deterministic = true
[checkpoint]
every_steps = 20
[daemon]
min_free_bytes = 104857600
consolidate_when_idle = false
[snapshot]
at = "23:59"
"""


def events(base: Path) -> list[dict]:
    from trainer.spool import events as event_log
    from trainer.spool.layout import Layout

    return event_log.read(Layout(base)).events


def t(event: dict) -> float:
    return datetime.fromisoformat(event["t"]).timestamp()


def new_base(work: Path, name: str, model: Path) -> Path:
    from trainer.config import default_config_toml
    from trainer.spool.layout import init_base

    layout, _ = init_base(work / name, default_config_toml())
    layout.config_file.write_text(CONFIG)
    shutil.copytree(model, layout.root / "models" / "base")
    return layout.root


def start_daemon(base: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "trainer.daemon", "run", "--base-dir", str(base)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    while True:
        try:
            state = orjson.loads((base / "run" / "daemon.json").read_bytes())
            if state.get("pid") == proc.pid and state.get("state") not in ("starting",):
                return proc
        except (OSError, orjson.JSONDecodeError):
            pass
        time.sleep(0.01)


def trainctl(base: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "ctl", "--base-dir", str(base), *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)


def enqueue_all(base: Path, files: list[Path]) -> None:
    from trainer.config import load_config
    from trainer.intake import enqueue
    from trainer.spool.layout import open_base

    layout = open_base(base)
    limits = load_config(layout.config_file).spool
    for path in files:
        enqueue.enqueue(layout, path, limits=limits)


def engine_alone_child(base: Path, files: list[Path]) -> None:
    """The engine called directly, in a fresh process like the daemon's: model loaded first,
    then timed from the first item's hash to the last item's final checkpoint. Prints JSON."""
    from trainer.config import load_config
    from trainer.train.engine import Engine

    saves = []
    original = Engine.checkpoint

    def counted(self):
        saves.append(1)
        return original(self)

    Engine.checkpoint = counted
    engine = Engine(base, load_config(base / "config.toml"))
    engine.start()
    start = time.perf_counter()
    for n, path in enumerate(files):
        plan = engine.prepare(f"item{n}", hashlib.sha256(path.read_bytes()).hexdigest(), path)
        engine.train(plan, lambda p: True)
    seconds = time.perf_counter() - start
    print(orjson.dumps({"seconds": seconds, "checkpoints": len(saves)}).decode())


def engine_alone(base: Path, files: list[Path]) -> tuple[float, int]:
    out = subprocess.run([sys.executable, __file__, "--engine-alone", str(base), *map(str, files)],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    result = orjson.loads(out.strip().splitlines()[-1])
    return result["seconds"], result["checkpoints"]


def through_daemon(base: Path, files: list[Path]) -> tuple[float, int]:
    """Items queued before the daemon starts (``--exit-when-idle``): first claim to last done,
    so the model load is outside and nothing polls the daemon while it trains. (Enqueue to
    claim is the pickup latency, measured below.)"""
    enqueue_all(base, files)
    log = base.parent / f"{base.name}.log"
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "-m", "trainer.daemon", "run", "--base-dir", str(base), "--exit-when-idle"],
                       stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=True)
    log_text = log.read_text()
    saves = sum(1 for line in log_text.splitlines() if "checkpoint " in line and " saved at step " in line)
    first = min(t(e) for e in events(base) if e["event"] == "claimed")
    return max(t(e) for e in events(base) if e["event"] == "done") - first, saves


def overhead_rounds(work: Path, model: Path, files: list[Path], rounds: int) -> list[dict]:
    """Engine alone and daemon, alternating which goes first (AB BA AB ...): a drift in the
    machine's speed hits both halves of a round alike, and the order effect cancels out."""
    results = []
    for n in range(rounds):
        order = ("engine", "daemon") if n % 2 == 0 else ("daemon", "engine")
        result = {"order": order}
        for side in order:
            base = new_base(work, f"r{n}-{side}", model)
            result[side] = (engine_alone if side == "engine" else through_daemon)(base, files)
            shutil.rmtree(base)
        result["ratio"] = result["daemon"][0] / result["engine"][0]
        results.append(result)
        print(f"round {n + 1}: engine {result['engine'][0]:.2f} s, daemon {result['daemon'][0]:.2f} s, "
              f"{100 * (result['ratio'] - 1):+.1f}%", file=sys.stderr)
    return results


class Timers:
    """Calls and their (start, end) times per label, for functions wrapped in place. A stack
    says whose time it is: an fsync inside the engine's checkpoint is the engine's (the engine
    alone does it too), one inside a claim is the daemon's."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = {}
        self.owner = ["daemon"]

    def _record(self, label: str, start: float, end: float) -> None:
        self.spans.setdefault(label, []).append((start, end))

    def wrap(self, holder, name: str, label: str, *, owner: str | None = None, by_owner: bool = False) -> None:
        """``by_owner``: the label gets `` (engine)`` when called from inside the engine."""
        original = getattr(holder, name)

        def timed(*args, **kwargs):
            where = f"{label} ({self.owner[-1]})" if by_owner and self.owner[-1] != "daemon" else label
            if owner:
                self.owner.append(owner)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._record(where, start, time.perf_counter())
                if owner:
                    self.owner.pop()

        setattr(holder, name, timed)

    def wrap_fsync(self) -> None:
        original = os.fsync

        def fsync(fd):
            start = time.perf_counter()
            try:
                return original(fd)
            finally:
                self._record(f"fsync ({self.owner[-1]})", start, time.perf_counter())

        os.fsync = fsync

    def window(self, start: float, end: float) -> tuple[dict[str, float], dict[str, int]]:
        """Seconds and calls per label, counting only calls that began inside [start, end]."""
        seconds, calls = {}, {}
        for label, spans in self.spans.items():
            inside = [(a, b) for a, b in spans if start <= a <= end]
            seconds[label] = sum(b - a for a, b in inside)
            calls[label] = len(inside)
        return seconds, calls


# (label, what it is) for the daemon's own work: disjoint, none inside another
DAEMON_PARTS = [
    ("claim", "claim: spool lock, rename to active/, fsyncs, event"),
    ("revalidate", "re-validation + sha256 of the data at claim"),
    ("set_tokens", "token statistics into the item's metadata (atomic write)"),
    ("complete", "done: rename to done/, fsyncs, event"),
    ("write_state", "state file writes (run/daemon.json, atomic, <= 1/s while training)"),
    ("publish_rest", "the rest of publishing (the record, STATUS/WATCHDOG no-ops)"),
    ("read_requests", "control request checks (every step and every tick)"),
    ("housekeeping", "housekeeping (snapshot due?) at checkpoints and ticks"),
    ("space_guard", "free-space check before every checkpoint"),
    ("disk_ok", "free-space check before a claim"),
    ("after_item", "after an item: resident memory, GPU memory"),
    ("take_inbox", "inbox scan"),
    ("idle", "idle check"),
    ("wait", "waits (inotify/heartbeat)"),
    ("log", "log lines (formatted and written to stderr)"),
    ("log (engine)", "the engine's log lines (dropped in the engine alone: no handler)"),
]


def breakdown(work: Path, model: Path, files: list[Path]) -> dict:
    """The daemon in this process with timers on its own work; the engine's compute (prepare and
    train, less the daemon's callbacks inside them) is what the engine alone would do."""
    import io

    from trainer.config import load_config
    from trainer.daemon import items, logs
    from trainer.daemon.housekeeping import Housekeeping
    from trainer.daemon.items import ItemTrainer
    from trainer.daemon.service import Daemon
    from trainer.spool import control, queue
    from trainer.spool.layout import open_base
    from trainer.train.engine import Engine

    base = new_base(work, "breakdown", model)
    enqueue_all(base, files)
    layout = open_base(base)
    timers = Timers()
    sink = io.StringIO()
    handler = logs.setup(stream=sink)
    timers.wrap(handler, "handle", "log", by_owner=True)
    timers.wrap_fsync()
    for name in ("claim_next", "claim_specific"):
        timers.wrap(queue, name, "claim")
    timers.wrap(queue, "set_tokens", "set_tokens")
    timers.wrap(queue, "complete", "complete")
    timers.wrap(control, "write_state", "write_state")
    timers.wrap(control, "read_requests", "read_requests")
    timers.wrap(Engine, "prepare", "engine", owner="engine")
    timers.wrap(Engine, "train", "engine", owner="engine")
    timers.wrap(Engine, "checkpoint", "checkpoint")
    timers.wrap(items, "check_data", "revalidate")
    timers.wrap(queue, "is_idle", "idle")
    for method, label in [("publish", "publish"), ("_check_memory", "after_item"), ("_take_inbox", "take_inbox"),
                          ("wait", "wait")]:
        timers.wrap(Daemon, method, label)
    timers.wrap(Housekeeping, "snapshot_if_due", "housekeeping")
    timers.wrap(Housekeeping, "room_to_claim", "disk_ok")
    # Called from inside the engine: the daemon's time, taken out of the engine's.
    timers.wrap(ItemTrainer, "_after_step", "after_step", owner="daemon")
    timers.wrap(Housekeeping, "space_guard", "space_guard", owner="daemon")
    daemon = Daemon(layout, load_config(layout.config_file))
    assert daemon.run(exit_when_idle=True) == 0
    logging.getLogger().removeHandler(handler)
    # The window: the first claim to the last item done, as in through_daemon().
    start, end = timers.spans["claim"][0][0], timers.spans["complete"][-1][1]
    sec, calls = timers.window(start, end)
    engine = sec["engine"] - sec["after_step"] - sec["space_guard"] - sec.get("log (engine)", 0.0)
    sec["publish_rest"] = sec.get("publish", 0.0) - sec.get("write_state", 0.0)
    calls["publish_rest"] = calls.get("publish", 0)
    return {"wall": end - start, "engine": engine, "seconds": sec, "calls": calls, "items": len(files)}


def print_breakdown(b: dict) -> None:
    sec, calls = b["seconds"], b["calls"]
    own = b["wall"] - b["engine"]
    print(f"\n**Breakdown** (the daemon in-process with timers; {b['items']} items, first claim to last done "
          f"{b['wall']:.3f} s, of which the engine's own compute {b['engine']:.3f} s)\n")
    print("| the daemon's own work | calls | total ms | of the run |")
    print("|---|---:|---:|---:|")
    listed = 0.0
    for label, what in DAEMON_PARTS:
        seconds = sec.get(label, 0.0)
        listed += seconds
        print(f"| {what} | {calls.get(label, 0)} | {1000 * seconds:.1f} | {100 * seconds / b['wall']:.2f}% |")
    rest = own - listed
    print(f"| the loop itself (everything else outside the engine) | | {1000 * rest:.1f} | "
          f"{100 * rest / b['wall']:.2f}% |")
    print(f"| **total: first claim to last done minus the engine's compute** | | **{1000 * own:.1f}** | "
          f"**{100 * own / b['wall']:.2f}%** |")
    print(f"\nOf the daemon's work, fsync: {calls.get('fsync (daemon)', 0)} calls, "
          f"{1000 * sec.get('fsync (daemon)', 0.0):.1f} ms. Inside the engine (the same in the engine alone): "
          f"{calls.get('checkpoint', 0)} checkpoint saves, {1000 * sec.get('checkpoint', 0.0):.1f} ms, "
          f"with {calls.get('fsync (engine)', 0)} fsyncs, {1000 * sec.get('fsync (engine)', 0.0):.1f} ms.")


def model_load_seconds(base: Path) -> float:
    """What a fresh process pays to get a loaded model: importing torch and transformers, then
    loading the weights (median of 3 fresh processes)."""
    code = ("import sys, time\nstart = time.perf_counter()\nfrom pathlib import Path\n"
            "from trainer.config import load_config\nfrom trainer.train import model\n"
            "base = Path(sys.argv[1])\nmodel.load(base, load_config(base / 'config.toml').model)\n"
            "print(time.perf_counter() - start)\n")
    runs = [float(subprocess.run([sys.executable, "-c", code, str(base)], capture_output=True, text=True,
                                 cwd=REPO, check=True).stdout) for _ in range(3)]
    return statistics.median(runs)


def recovery(base: Path, big: Path) -> tuple[float, float]:
    """Kill -9 mid-training, restart: (kill to first step, the restarted daemon's own model load
    time, imports included)."""
    proc = start_daemon(base)
    trainctl(base, "enqueue", "-q", str(big))
    metrics = base / "metrics"
    while not metrics.exists() or not any(metrics.iterdir()) or len(next(metrics.iterdir()).read_bytes().splitlines()) < 25:
        time.sleep(0.01)
    killed = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lines_before = len(next(metrics.iterdir()).read_bytes().splitlines())
    proc = subprocess.Popen([sys.executable, "-m", "trainer.daemon", "run", "--base-dir", str(base)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    path = next(metrics.iterdir())
    while len(path.read_bytes().splitlines()) <= lines_before:
        time.sleep(0.005)
    first_step = orjson.loads(path.read_bytes().splitlines()[lines_before])
    stamp = datetime.fromisoformat(first_step["t"]).timestamp()
    load = orjson.loads((base / "run" / "daemon.json").read_bytes())["model_load_s"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return stamp - killed, load


def pickups(base: Path, files: list[Path]) -> list[float]:
    proc = start_daemon(base)
    latencies = []
    for path in files:
        trainctl(base, "enqueue", "-q", str(path))
        trainctl(base, "wait", "--idle", "--timeout", "120")
        time.sleep(0.3)  # idle again, waiting in its sleep
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    log = events(base)
    enqueued = {e["id"]: t(e) for e in log if e["event"] == "enqueued"}
    claimed = {e["id"]: t(e) for e in log if e["event"] == "claimed"}
    latencies = [claimed[i] - enqueued[i] for i in enqueued]
    return latencies


def print_overhead(args, rounds: list[dict]) -> None:
    ratios = [r["ratio"] for r in rounds]
    median = statistics.median(ratios)
    print(f"**Overhead**: {args.items} items x {args.records} records, {len(rounds)} rounds, engine alone and "
          f"daemon alternating which goes first\n")
    print("| round | order | engine alone | through the daemon | daemon vs engine | checkpoints (engine, daemon) |")
    print("|---:|---|---:|---:|---:|---|")
    for n, r in enumerate(rounds, 1):
        print(f"| {n} | {' then '.join(r['order'])} | {r['engine'][0]:.2f} s | {r['daemon'][0]:.2f} s | "
              f"{100 * (r['ratio'] - 1):+.1f}% | {r['engine'][1]}, {r['daemon'][1]} |")
    print(f"\nMedian ratio {median:.3f} ({100 * (median - 1):+.1f}%), range {100 * (min(ratios) - 1):+.1f}% to "
          f"{100 * (max(ratios) - 1):+.1f}%; target <= +3%: {'met' if median <= 1.03 else 'missed'}.")


def main() -> None:
    if sys.argv[1:2] == ["--engine-alone"]:  # the child process of engine_alone()
        engine_alone_child(Path(sys.argv[2]), [Path(a) for a in sys.argv[3:]])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pickups", type=int, default=10)
    parser.add_argument("--only-overhead", action="store_true", help="skip recovery and pickup latency")
    args = parser.parse_args()
    from trainer.demo.sample_data import write_sample_chat
    from trainer.train.demo_model import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    try:
        model = build_demo_model(work / "model")
        files = [write_sample_chat(work / f"item{n}.jsonl", args.records, seed=n) for n in range(args.items)]
        rounds = overhead_rounds(work, model, files, args.rounds)
        parts = breakdown(work, model, files)
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
        if rounds:
            print_overhead(args, rounds)
        print_breakdown(parts)
        if args.only_overhead:
            return
        fresh_load = model_load_seconds(new_base(work, "load", model))
        big = write_sample_chat(work / "big.jsonl", 6000, seed=99)
        recover, load = recovery(new_base(work, "recovery", model), big)
        small = [write_sample_chat(work / f"small{n}.jsonl", 5, seed=n) for n in range(args.pickups)]
        latency = pickups(new_base(work, "pickup", model), small)
        print("\n| what | figure | target |")
        print("|---|---|---|")
        print(f"| kill -9 to first step after restart | {recover:.2f} s (the daemon's model load, imports "
              f"included: {load:.2f} s; a fresh process alone: {fresh_load:.2f} s) | |")
        print(f"| recovery excluding model load | {recover - load:.2f} s | <= 2 s |")
        print(f"| pickup latency, enqueue to claim ({len(latency)} items) | median {statistics.median(latency) * 1000:.0f} ms, "
              f"max {max(latency) * 1000:.0f} ms | <= 1 s |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
