"""The daemon's own costs, measured against the engine alone, in one run.

    .venv/bin/python bench/bench_daemon.py [--items 4] [--records 600] [--pickups 10]

- overhead: the same items trained through the daemon (enqueue to done, model already
  loaded) against the engine called directly (prepare + train), same tiny model and data;
- recovery: kill -9 mid-training, restart; time from the kill to the first training step
  after the restart, minus the model load (measured on its own);
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


def through_daemon(base: Path, files: list[Path]) -> float:
    proc = start_daemon(base)
    trainctl(base, "enqueue", "-q", *map(str, files))
    trainctl(base, "wait", "--idle", "--timeout", "600")
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    log = events(base)
    first = min(t(e) for e in log if e["event"] == "enqueued")
    last = max(t(e) for e in log if e["event"] == "done")
    return last - first


def model_load_seconds(base: Path) -> float:
    from trainer.config import load_config
    from trainer.train import model as model_io

    start = time.perf_counter()
    model_io.load(base, load_config(base / "config.toml").model)
    return time.perf_counter() - start


def recovery(base: Path, big: Path) -> float:
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
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return stamp - killed


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
        load = model_load_seconds(new_base(work, "load", model))
        big = write_sample_chat(work / "big.jsonl", 6000, seed=99)
        recover = recovery(new_base(work, "recovery", model), big)
        small = [write_sample_chat(work / f"small{n}.jsonl", 5, seed=n) for n in range(args.pickups)]
        latency = pickups(new_base(work, "pickup", model), small)
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
        print("| what | figure | target |")
        print("|---|---|---|")
        print(f"| {args.items} items x {args.records} records: engine alone | {direct:.2f} s | |")
        print(f"| the same through the daemon, enqueue to done | {daemon:.2f} s ({100 * (daemon / direct - 1):+.1f}%) | <= +3% |")
        print(f"| kill -9 to first step after restart | {recover:.2f} s (model load {load:.2f} s) | |")
        print(f"| recovery excluding model load | {recover - load:.2f} s | <= 2 s |")
        print(f"| pickup latency, enqueue to claim ({len(latency)} items) | median {statistics.median(latency) * 1000:.0f} ms, "
              f"max {max(latency) * 1000:.0f} ms | <= 1 s |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
