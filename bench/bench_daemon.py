"""The daemon's own costs, measured against the engine alone, in one run.

    .venv/bin/python bench/bench_daemon.py [--items 4] [--records 600] [--pickups 10]

- overhead: the same items trained through the daemon (enqueue to done, model already
  loaded) against the engine called directly (prepare + train), same tiny model and data;
- recovery: kill -9 mid-training, restart; time from the kill to the first training step
  after the restart, minus the model load (a fresh process importing torch and transformers
  and loading the weights, measured on its own);
- pickup latency: `trainctl enqueue` on an idle daemon to the claim (event log times).
"""

from __future__ import annotations

import argparse
import hashlib
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
[checkpoint]
every_steps = 20
[daemon]
min_free_bytes = 104857600
consolidate_when_idle = false
[snapshot]
at = "23:59"
"""


def events(base: Path) -> list[dict]:
    return [orjson.loads(line) for line in (base / "events.jsonl").read_bytes().splitlines() if line.strip()]


def t(event: dict) -> float:
    return datetime.fromisoformat(event["t"]).timestamp()


def new_base(work: Path, name: str, model: Path) -> Path:
    from trainer.config import default_config_toml
    from trainer.layout import init_base

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


def engine_direct(base: Path, files: list[Path]) -> float:
    from trainer.config import load_config
    from trainer.train.engine import Engine

    engine = Engine(base, load_config(base / "config.toml"))
    engine.start()
    start = time.perf_counter()
    for n, path in enumerate(files):
        plan = engine.prepare(f"item{n}", hashlib.sha256(path.read_bytes()).hexdigest(), path)
        engine.train(plan, lambda p: True)
    return time.perf_counter() - start


def _wait_events(base: Path, kind: str, count: int) -> list[dict]:
    while True:  # polled from here, not by a trainctl process competing for the CPU
        log = [e for e in events(base) if e["event"] == kind]
        if len(log) >= count:
            return log
        time.sleep(0.25)


def through_daemon(base: Path, files: list[Path]) -> float:
    """Items queued while paused, then resumed: first claim to last done. (Enqueue-to-claim
    is the pickup latency, measured below.)"""
    trainctl(base, "pause")
    proc = start_daemon(base)
    trainctl(base, "enqueue", "-q", *map(str, files))
    trainctl(base, "resume")
    done = _wait_events(base, "done", len(files))
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    first = min(t(e) for e in events(base) if e["event"] == "claimed")
    return max(t(e) for e in done) - first


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--pickups", type=int, default=10)
    args = parser.parse_args()
    from trainer.sample_data import write_sample_chat
    from trainer.train.demo_model import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    try:
        model = build_demo_model(work / "model")
        files = [write_sample_chat(work / f"item{n}.jsonl", args.records, seed=n) for n in range(args.items)]
        direct = engine_direct(new_base(work, "direct", model), files)
        daemon = through_daemon(new_base(work, "daemon", model), files)
        fresh_load = model_load_seconds(new_base(work, "load", model))
        big = write_sample_chat(work / "big.jsonl", 6000, seed=99)
        recover, load = recovery(new_base(work, "recovery", model), big)
        small = [write_sample_chat(work / f"small{n}.jsonl", 5, seed=n) for n in range(args.pickups)]
        latency = pickups(new_base(work, "pickup", model), small)
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
        print("| what | figure | target |")
        print("|---|---|---|")
        print(f"| {args.items} items x {args.records} records: engine alone | {direct:.2f} s | |")
        print(f"| the same through the daemon, first claim to last done | {daemon:.2f} s "
              f"({100 * (daemon / direct - 1):+.1f}%) | <= +3% |")
        print(f"| kill -9 to first step after restart | {recover:.2f} s (the daemon's model load, imports "
              f"included: {load:.2f} s; a fresh process alone: {fresh_load:.2f} s) | |")
        print(f"| recovery excluding model load | {recover - load:.2f} s | <= 2 s |")
        print(f"| pickup latency, enqueue to claim ({len(latency)} items) | median {statistics.median(latency) * 1000:.0f} ms, "
              f"max {max(latency) * 1000:.0f} ms | <= 1 s |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
