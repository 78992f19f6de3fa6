"""Data-parallel training on the CPU: 2 gloo ranks against one process, side by side.

    .venv/bin/python bench/bench_distributed.py [--models tiny,34m] [--runs 3] [--records 600]

Contenders, each its own process tree, alternating, medians of --runs, one epoch over the same
chat data (bench_train.py's), 8 rows of 256 tokens a step, fp32:

- 1 process x 1 thread;
- 1 process x 2 threads (torch's intra-op threads: the other way to use a second core);
- 2 ranks x 1 thread, under torch's elastic agent (gloo): rank 0 leads (reads the data, posts
  each rank its half of every step's rows), rank 1 follows (trainer/train/world.py, follower.py);
- the same 2 ranks with ``distributed.strategy = "fsdp"`` (FSDP2: each holds half the weights,
  gradients and optimizer state; trainer/train/sharding.py).

Reported: real tokens/s and the ratio to 1 x 1; for the 2 ranks, the share of the leader's
training time in each collective at its cost (the time of the last rank to arrive, who waited
for no one; the others' extra time is waiting for a slower rank): the control agreement (the
step command's scatter, post/receive, and the out-of-memory agreement, any) apart from the
loss and gradient sums. The World's methods are timed by a subclass inside the bench's ranks;
trainer/ is not instrumented. Last, how far the 2-rank weights end from the 1-process ones
when the ranks' rows are NOT the single process's micro-batches (7 rows a step: float
reassociation, amplified by Adam).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_train import BATCH, LR, MODELS, ROW, WARMUP, make_data  # noqa: E402


def _config(rows: int, strategy: str = "ddp"):
    from trainer.config import CheckpointConfig, Config, DistributedConfig, TrainConfig

    return Config(train=TrainConfig(max_length=ROW, micro_batch_size=rows, learning_rate=LR, warmup_steps=WARMUP,
                                    max_grad_norm=1.0),
                  checkpoint=CheckpointConfig(every_steps=0, every_minutes=0),
                  distributed=DistributedConfig(strategy=strategy))


COLLECTIVES = ("post", "receive", "any", "gather_numbers", "sum", "sum_gradients")


def timed_world(world, log: dict[str, list[float]]):
    """``world`` with every collective timed into ``log[name]`` (one entry per call); the
    followers' ``receive`` is logged only for step commands, so every list has one entry per
    step on every rank (``any`` one per attempt: an out-of-memory retry adds one)."""
    from trainer.train.world import World

    class TimedWorld(World):
        def _timed(self, name, *args):
            started = time.perf_counter()
            result = getattr(World, name)(self, *args)
            seconds = time.perf_counter() - started
            if name != "receive" or result[0] == "step":
                log.setdefault(name, []).append(seconds)
            return result

        def post(self, per_rank):
            if per_rank[0][0] != "step":  # the start's "load" and the final "stop"
                return World.post(self, per_rank)
            return self._timed("post", per_rank)

        def receive(self):
            return self._timed("receive")

        def any(self, flag):
            return self._timed("any", flag)

        def gather_numbers(self, numbers):  # the step's loss (and each rank's memory)
            return self._timed("gather_numbers", numbers)

        def sum(self, value):
            return self._timed("sum", value)

        def sum_gradients(self, params):
            return self._timed("sum_gradients", params)

    return TimedWorld(world.rank, world.size)


def train(model_dir: str, data: str, out: str, threads: int, rows: int, strategy: str = "ddp") -> None:
    """One rank's (or the lone process's) run: the leader trains the item, the followers serve
    it (``follower.follow``). Every rank writes its collectives' times to ``out.rank-R``; the
    leader also its throughput and final weights to ``out``. Sharded, the ranks share one base
    dir (``model_dir``'s parent's parent, made by ``run``)."""
    import torch

    from trainer.train import weights_io
    from trainer.train.engine import Engine
    from trainer.train.follower import follow
    from trainer.train.world import World

    torch.set_num_threads(threads)
    world = World.from_environment()
    if world.distributed:
        torch.distributed.init_process_group("gloo")
    log: dict[str, list[float]] = {}
    sharded = strategy == "fsdp"
    base = Path(model_dir).parent.parent if sharded else Path(tempfile.mkdtemp(prefix=f"dist-bench-{world.rank}-"))
    try:
        if not sharded:
            shutil.copytree(model_dir, base / "models" / "base")
        engine = Engine(base, _config(rows, strategy), timed_world(world, log))
        if not world.is_leader:
            follow(engine)
            torch.save(log, f"{out}.rank-{world.rank}")
            return
        engine.start()
        path = Path(data)
        plan = engine.prepare("bench", hashlib.sha256(path.read_bytes()).hexdigest(), path)
        tokens, marks = 0, [time.perf_counter()]

        def step(progress) -> bool:
            nonlocal tokens
            tokens += progress.tokens
            marks.append(time.perf_counter())
            return True

        engine.train(plan, step)
        if engine.sharded:
            params = {n: t for n, t in weights_io.full_weights(engine).items() if n in engine.params}
        else:
            params = {n: p.detach().clone() for n, p in engine.params.items()}
        engine.release_followers()
        seconds = marks[-1] - marks[0]
        torch.save(log, f"{out}.rank-0")
        torch.save({"tokens_per_s": tokens / seconds, "seconds": seconds, "steps": len(marks) - 1,
                    "step_s": [b - a for a, b in zip(marks, marks[1:])], "params": params}, out)
    finally:
        if not sharded:
            shutil.rmtree(base, ignore_errors=True)
        if world.distributed:
            torch.distributed.destroy_process_group()


def overheads(logs: list[dict[str, list[float]]], seconds: float) -> dict[str, float]:
    """Shares of the leader's training time, summed over steps.

    A collective's *cost* at one step is the time the last rank to arrive spent in it (it
    waited for no one): the minimum over ranks. What the others spent beyond that is waiting
    for a slower rank (its compute, or the leader's bookkeeping between steps), not the
    collective. The step command's scatter is ``post`` on the leader and ``receive`` on a
    follower; the out-of-memory agreement is ``any``.
    """
    def cost(names_by_rank: list[str]) -> float:
        per_rank = [log.get(name, []) for log, name in zip(logs, names_by_rank)]
        return sum(min(times) for times in zip(*per_rank))

    followers = len(logs) - 1
    scatter = cost(["post"] + ["receive"] * followers)
    agree = cost(["any"] * len(logs))
    sums = sum(cost([name] * len(logs)) for name in ("gather_numbers", "sum", "sum_gradients"))
    leader = sum(sum(logs[0].get(name, [])) for name in COLLECTIVES)
    steps = max(len(logs[0].get("post", [])), 1)
    return {"control": (scatter + agree) / seconds, "scatter": scatter / seconds, "agree": agree / seconds,
            "sums": sums / seconds, "leader_in_collectives": leader / seconds,
            "control_ms": 1000 * (scatter + agree) / steps}


def control_loop(out: str, threads: int, iterations: int) -> None:
    """The control agreement alone, back to back with no training between: the leader posts a
    real-sized step command (8 rows of 256 tokens, split over the ranks) and every rank joins
    the out-of-memory agreement. Rank 0 writes each iteration's seconds to ``out``."""
    import random

    import torch

    from trainer.train.packing import Row
    from trainer.train.world import World, shard_indices

    torch.set_num_threads(threads)
    world = World.from_environment()
    torch.distributed.init_process_group("gloo")
    try:
        rng = random.Random(0)
        rows = [Row([rng.randrange(1024) for _ in range(ROW)], [rng.randrange(1024) for _ in range(ROW)],
                    list(range(ROW))) for _ in range(BATCH)]
        times = []
        for _ in range(iterations):
            started = time.perf_counter()
            if world.is_leader:
                world.post([("step", [rows[i] for i in shard_indices(BATCH, r, world.size)], 1000, 1e-3, 0)
                            for r in range(world.size)])
            else:
                world.receive()
            world.any(False)
            times.append(time.perf_counter() - started)
        if world.is_leader:
            torch.save(times, out)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, model_dir: Path, data: Path, out: Path, threads: int, rows: int, strategy: str) -> None:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id="bench", rdzv_backend="c10d",
                          rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    if data is None:  # --control-only
        elastic_launch(config, control_loop)(str(out), threads, rows)
    else:
        elastic_launch(config, train)(str(model_dir), str(data), str(out), threads, rows, strategy)


def run(nproc: int, threads: int, model_dir: Path, data: Path, work: Path, rows: int = BATCH,
        strategy: str = "ddp") -> dict:
    out = work / f"out-{nproc}-{threads}-{rows}-{strategy}.pt"
    if strategy == "fsdp":  # the ranks share one base dir (each writes its shards there): a fresh one
        shared = work / f"shared-{os.urandom(3).hex()}"
        shutil.copytree(model_dir, shared / "models" / "base")
        model_dir = shared / "models" / "base"
    argv = [sys.executable, __file__, "--launch", str(nproc), "--threads", str(threads), "--rows", str(rows),
            "--model-dir", str(model_dir), "--data", str(data), "--out", str(out), "--strategy", strategy]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise SystemExit(f"{nproc} x {threads} failed:\n{done.stderr[-3000:]}")
    import torch

    result = torch.load(out, weights_only=True)
    logs = [torch.load(f"{out}.rank-{rank}", weights_only=True) for rank in range(nproc)]
    result.update(overheads(logs, result["seconds"]))
    if strategy == "fsdp":
        shutil.rmtree(model_dir.parent.parent, ignore_errors=True)
    return result


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def control_only(iterations: int) -> None:
    """Median and 90th percentile of one control agreement, with no training to wait for."""
    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-control-"))
    try:
        out = work / "control.pt"
        argv = [sys.executable, __file__, "--launch", "2", "--threads", "1", "--rows", str(iterations),
                "--out", str(out)]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            raise SystemExit(f"control loop failed:\n{done.stderr[-3000:]}")
        times = sorted(torch.load(out, weights_only=True))
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}; {load_average()}")
        print(f"control agreement alone (2 gloo ranks, {BATCH} rows of {ROW} tokens posted, then any), "
              f"{iterations} times: median {1000 * statistics.median(times):.3f} ms, "
              f"p90 {1000 * times[int(0.9 * len(times))]:.3f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,34m")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--launch", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=BATCH)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--control-only", type=int, metavar="N",
                        help="time N control agreements alone (step scatter + out-of-memory agreement), 2 ranks")
    args = parser.parse_args()
    if args.control_only:
        control_only(args.control_only)
        return
    if args.launch:
        launch(args.launch, args.model_dir, args.data, args.out, args.threads, args.rows, args.strategy)
        return

    from trainer.train.demo_model import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    try:
        data = make_data(work / "chat.jsonl", args.records)
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"data: {args.records} records, {os.cpu_count()} cores, fp32 CPU, gloo; {load_average()}\n")
        contenders = {"1 process x 1 thread": (1, 1, "ddp"), "1 process x 2 threads": (1, 2, "ddp"),
                      "2 ranks x 1 thread": (2, 1, "ddp"), "2 ranks x 1 thread, fsdp": (2, 1, "fsdp")}
        for name in args.models.split(","):
            model_dir = work / name / "models" / "base"
            build_demo_model(model_dir, **MODELS[name])
            results: dict[str, list[dict]] = {label: [] for label in contenders}
            for _ in range(args.runs):
                for label, (nproc, threads, strategy) in contenders.items():
                    results[label].append(run(nproc, threads, model_dir, data, work, strategy=strategy))
            floor = statistics.median(r["tokens_per_s"] for r in results["1 process x 1 thread"])
            print(f"### {name} model ({load_average()})\n")
            print("| contender | real tokens/s (median) | vs 1 x 1 | train s (median) | step ms (median) |")
            print("|---|---:|---:|---:|---:|")
            for label, runs in results.items():
                tps = statistics.median(r["tokens_per_s"] for r in runs)
                secs = statistics.median(r["seconds"] for r in runs)
                step_ms = statistics.median(statistics.median(r["step_s"]) for r in runs) * 1000
                print(f"| {label} | {tps:,.0f} | {tps / floor:.2f}x | {secs:.1f} | {step_ms:.1f} |")
            two = results["2 ranks x 1 thread"]
            print("\n2 ranks, share of the leader's training time (median of runs; a collective's cost is the "
                  "time of the last rank to arrive in it):\n")
            print("| step command's scatter | out-of-memory agreement | control (both) | control ms a step "
                  "| loss + gradient sums | leader's time in all collectives, waits included |")
            print("|---:|---:|---:|---:|---:|---:|")
            cells = [f"{statistics.median(r[key] for r in two):.2%}"
                     for key in ("scatter", "agree", "control", "sums", "leader_in_collectives")]
            cells.insert(3, f"{statistics.median(r['control_ms'] for r in two):.2f}")
            print(f"| {' | '.join(cells)} |\n{len(two[0]['step_s'])} steps a run\n")
            one, two = (run(n, 1, model_dir, data, work, rows=7) for n in (1, 2))
            worst = max((one["params"][k] - two["params"][k]).abs().max().item() for k in one["params"])
            sharded = statistics.median(r["tokens_per_s"] for r in results["2 ranks x 1 thread, fsdp"])
            fsdp_weights = results["2 ranks x 1 thread, fsdp"][0]["params"]
            apart = max((fsdp_weights[k] - results["1 process x 1 thread"][0]["params"][k]).abs().max().item()
                        for k in fsdp_weights)
            print(f"fsdp against ddp, 2 ranks each: {sharded / statistics.median(r['tokens_per_s'] for r in results['2 ranks x 1 thread']):.2f}x "
                  f"the tokens/s; its final weights {apart:.2e} from one process's (8 rows a step)")
            print(f"\n7 rows a step (ranks of 4 and 3, the one process in one micro-batch of 7): final weights "
                  f"max |dw| = {worst:.2e}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
