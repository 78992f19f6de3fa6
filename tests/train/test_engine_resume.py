"""Exact resume: killed at random moments and restarted, training ends bit-identical, and so
do the eval numbers (each item's held-out share, the final weights on a set)."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

pytest.importorskip("torch")

from trainer.demo.sample_data import write_sample_chat  # noqa: E402

RUNNER = Path(__file__).resolve().parents[1] / "helpers" / "engine_runner.py"
REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "train": {"max_length": 128, "micro_batch_size": 2, "grad_accum_steps": 2, "learning_rate": 1e-3,
              "warmup_steps": 3, "deterministic": True, "schedule": "cosine-per-item"},
    "checkpoint": {"every_steps": 2, "keep_last": 2},
}


def _base(tmp_path: Path, demo_model: Path, name: str) -> Path:
    base = tmp_path / name
    shutil.copytree(demo_model, base / "models" / "base")
    return base


def _items(tmp_path: Path) -> list[str]:
    return [str(write_sample_chat(tmp_path / f"item{n}.jsonl", 90 + 40 * n, seed=n)) for n in range(3)]


def _start(base: Path, items: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUNNER), str(base), orjson.dumps(CONFIG).decode(), *items],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)


def _run_to_end(base: Path, items: list[str], evals: dict | None = None) -> tuple[str, dict[int, float]]:
    proc = _start(base, items)
    out, _ = proc.communicate(timeout=300)
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0 and "finished" in lines[-1]
    if evals is not None:
        for line in lines:
            _record_eval(evals, line)
        evals["final"] = lines[-1]["eval"]
    return lines[-1]["finished"], {line["global_step"]: line["loss"] for line in lines[:-1] if "global_step" in line}


def _record_eval(evals: dict, line: dict) -> bool:
    """Keep an item's held-out numbers; every time it is printed (again after a resume) they
    must be bitwise the same."""
    if "item_eval" not in line:
        return False
    numbers = line["item_eval"]
    assert evals.setdefault(numbers["item_id"], numbers) == numbers, "an item's eval differs after a resume"
    return True


def test_killed_runs_resume_bit_identically(tmp_path, demo_model):
    items = _items(tmp_path)
    reference_evals: dict = {}
    reference_hash, reference_losses = _run_to_end(_base(tmp_path, demo_model, "straight"), items, reference_evals)
    total_steps = max(reference_losses)
    assert total_steps >= 20

    base = _base(tmp_path, demo_model, "killed")
    rng = random.Random(7)
    losses: dict[int, float] = {}
    evals: dict = {}
    kills = 0
    while kills < 5:
        proc = _start(base, items)
        # Let it run a random number of steps, then SIGKILL it wherever it is: mid-step,
        # mid-checkpoint-write, or while loading.
        wanted = rng.randint(1, 6)
        seen = 0
        for line in proc.stdout:
            record = orjson.loads(line)
            if "finished" in record:
                break
            if _record_eval(evals, record):
                continue
            assert losses.setdefault(record["global_step"], record["loss"]) == record["loss"], \
                "a step redone after a crash gave a different loss"
            seen += 1
            if seen >= wanted:
                time.sleep(rng.random() * 0.05)
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
        proc.wait(30)
        proc.stdout.close()
        if proc.returncode == 0:
            break
    final_hash, tail_losses = _run_to_end(base, items, evals)
    for step, loss in tail_losses.items():
        assert losses.setdefault(step, loss) == loss
    assert kills >= 3
    assert losses == reference_losses, "the loss history differs from the uninterrupted run"
    assert final_hash == reference_hash, "final weights are not bit-identical"
    # Evaluation too: each item's held-out numbers and the final weights' numbers on a set,
    # bitwise equal to the uninterrupted run's (floats compared exactly).
    assert set(reference_evals) == {"item0", "item1", "item2", "final"}
    assert evals == reference_evals, "eval numbers differ after kill -9 and resume"
    leftovers = [p.name for p in (base / "checkpoints").iterdir() if p.name.startswith(".staging-")]
    assert leftovers == [], "a killed save left its staging dir behind after the restart"
