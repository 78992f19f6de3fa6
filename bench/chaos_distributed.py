"""Random kill -9 of a worker or of the launcher of `trainer run --nproc 2`, against a straight run.

    .venv/bin/python bench/chaos_distributed.py [--items 8] [--records 120] [--kills 20] [--seed 1] [--keep DIR]

Two copies of one base dir (the same items under the same ids) on the tiny demo model, CPU,
gloo, ``train.deterministic = true``. One trains straight through with two ranks. In the
other, a supervisor (what systemd's ``Restart=`` is to the unit) starts ``trainer run --nproc 2
--exit-when-idle`` and starts it again whenever it exits non-zero; ``--kills`` times it SIGKILLs
one process, chosen at random (seeded):

  target  rank 0, rank 1 (the group restarts inside the launcher, from the last checkpoint)
          or the launcher itself (its workers must die with it; the supervisor restarts it)
  moment  step: a random instant while training; checkpoint: as soon as a checkpoint's
          staging dir appears (rank 0 mid-write, rank 1 waiting in a collective)

What it checks, failing with exit 1 if any is wrong:

- every item is done exactly once (one "done" event each), none failed or lost;
- the final checkpoint (weights, optimizer state, TrainState) is bit-identical to the straight
  run's: nothing trained twice, nothing skipped;
- no orphan: after each kill of the launcher its workers are gone within 15 s, and no
  worker is left at the end;
- no debris (tmp/, staging dirs).

Prints a JSON report. The quick versions are tests/system/test_distributed.py.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_common import run_on_demo_model  # noqa: E402
from chaos_kill import (  # noqa: E402
    CONFIG,
    REPO,
    daemon_argv,
    debris,
    events,
    final_checkpoint,
    make_bases,
    read_state,
)

from trainer.daemon.launch import alive, workers  # noqa: E402  (chaos_kill puts the repo on the path)

GROUP = "\n[distributed]\nmax_restarts = 1000\ntimeout_seconds = 60.0\n"
TARGETS = ("rank0", "rank1", "launcher")
MOMENTS = ("step", "checkpoint")
ORPHAN_WAIT_S = 15.0


def ranks_of(pid: int) -> dict[int, int]:
    """rank -> pid of the launcher's live workers, by their process names."""
    return {rank: worker for worker, rank in workers(pid)}


def training(base: Path, launcher: int) -> bool:
    state = read_state(base)
    return state.get("pid") == launcher and state.get("state") == "training" and len(ranks_of(launcher)) == 2


def staging(base: Path) -> bool:
    directory = base / "checkpoints"
    return directory.exists() and any(p.name.startswith(".staging-") for p in directory.iterdir())


def wait_until(predicate, proc: subprocess.Popen, timeout: float) -> bool:
    """True once ``predicate()``; False if the launcher exited or the time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def run_chaos(base: Path, log: Path, kills: int, rng: random.Random) -> dict:
    done_kills: list[dict] = []
    orphans: list[int] = []
    seen_workers: set[int] = set()
    starts = 0
    with open(log, "ab") as out:
        proc = None
        while True:
            if proc is None or proc.poll() is not None:
                if proc is not None and proc.returncode == 0:
                    break  # idle: every item done
                proc = subprocess.Popen(daemon_argv(base, "--nproc", "2", "--exit-when-idle"), stdout=out,
                                        stderr=subprocess.STDOUT, cwd=REPO)
                starts += 1
            if len(done_kills) >= kills:
                proc.wait(3600)
                continue
            target, moment = rng.choice(TARGETS), rng.choice(MOMENTS)
            if not wait_until(lambda: training(base, proc.pid), proc, 300):
                continue
            if moment == "step":
                time.sleep(rng.uniform(0, 2.0))
            elif not wait_until(lambda: staging(base), proc, 60):
                continue
            workers = ranks_of(proc.pid)
            seen_workers |= set(workers.values())
            if len(workers) != 2 or proc.poll() is not None:
                continue
            victim = proc.pid if target == "launcher" else workers[int(target[-1])]
            phase = "checkpoint" if staging(base) else "step"
            try:
                psutil.Process(victim).send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
            done_kills.append({"target": target, "moment": moment, "phase": phase,
                               "step": (read_state(base).get("item") or {}).get("step")})
            if target == "launcher":
                proc.wait(30)
                deadline = time.monotonic() + ORPHAN_WAIT_S
                while time.monotonic() < deadline and any(alive(p) for p in workers.values()):
                    time.sleep(0.05)
                orphans += [p for p in workers.values() if alive(p)]
    left = [p for p in seen_workers if alive(p)]
    return {"kills": done_kills, "launcher_starts": starts, "orphans": orphans, "workers_left": left}


def experiment(work: Path, model: Path, *, items: int, records: int, kills: int, seed: int) -> dict:
    straight, chaos = make_bases(work, model, items, records, seed)
    for base in (straight, chaos):
        (base / "config.toml").write_text(CONFIG + GROUP)
    started = time.monotonic()
    with open(work / "straight.log", "wb") as out:
        code = subprocess.run(daemon_argv(straight, "--nproc", "2", "--exit-when-idle"), stdout=out,
                              stderr=subprocess.STDOUT, cwd=REPO, timeout=3600).returncode
    straight_s = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"the straight run exited {code}: see {work / 'straight.log'}")
    started = time.monotonic()
    chaos_run = run_chaos(chaos, work / "chaos.log", kills, random.Random(seed))
    chaos_s = time.monotonic() - started

    done = [e["id"] for e in events(chaos) if e.get("event") == "done"]
    failed = [e["id"] for e in events(chaos) if e.get("event") == "failed"]
    expected = sorted(e["id"] for e in events(straight) if e.get("event") == "done")
    problems = []
    if sorted(done) != expected:
        problems.append(f"done events {sorted(done)} != the straight run's {expected}")
    if failed:
        problems.append(f"failed items: {failed}")
    if final_checkpoint(chaos) != final_checkpoint(straight):
        problems.append("the final checkpoint differs from the straight run's (weights, optimizer or state)")
    if chaos_run["orphans"] or chaos_run["workers_left"]:
        problems.append(f"workers outlived their launcher: {chaos_run['orphans'] + chaos_run['workers_left']}")
    if leftovers := debris(chaos):
        problems.append(f"debris: {leftovers}")
    if len(chaos_run["kills"]) < kills:
        problems.append(f"only {len(chaos_run['kills'])} of {kills} kills happened before the queue ran dry")
    by_target = {t: sum(k["target"] == t for k in chaos_run["kills"]) for t in TARGETS}
    mid_checkpoint = sum(k["phase"] == "checkpoint" for k in chaos_run["kills"])
    return {"ok": not problems, "problems": problems, "items": items, "kills": len(chaos_run["kills"]),
            "by_target": by_target, "mid_checkpoint": mid_checkpoint, "launcher_starts": chaos_run["launcher_starts"],
            "straight_s": round(straight_s, 1), "chaos_s": round(chaos_s, 1), "kill_log": chaos_run["kills"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--records", type=int, default=120)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir, removed)")
    args = parser.parse_args()
    run_on_demo_model("chaos-distributed-", args.keep, lambda work, model: experiment(
        work, model, items=args.items, records=args.records, kills=args.kills, seed=args.seed))


if __name__ == "__main__":
    main()
