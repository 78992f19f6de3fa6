"""Random kill -9 against the real daemon (the quick version of bench/chaos_kill.py).

Eight kills over four small items, each aimed at one kind of moment (mid-step, mid-checkpoint
write, just after a claim, mid-snapshot, during recovery, before the Nth rename or fsync),
restarted after each; then the same checks as the bench, against a run never interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import chaos_kill  # noqa: E402


def test_killed_eight_times_the_daemon_loses_nothing_and_ends_bit_identical(tmp_path, demo_model):
    report = chaos_kill.experiment(tmp_path, demo_model, items=4, records=120, kills=8, seed=3, cycle=True)
    assert report["problems"] == [], report
    assert report["kills"] == 8, "every kill landed before the queue ran dry"
    assert report["items_lost"] == 0 and report["items_done_once"] == 4
    assert report["duplicated_steps_below_restored_checkpoint"] == 0
    assert report["loaded_unverified_checkpoints"] == 0 and report["corrupt_committed_checkpoints"] == 0
    assert report["debris_left"] == []
    assert all(report["final_files_identical"].values()), "weights, optimizer, RNG and TrainState bit-identical"
    assert report["eval_identical"], "every item's held-out eval numbers bitwise those of the straight run"
    assert report["restarts_resumed_from_a_checkpoint"] >= 4


def test_two_fresh_engines_with_one_seed_checkpoint_the_same_random_state(tmp_path, demo_model):
    # numpy's generator is checkpointed with the others; it used to start from OS entropy, so
    # an interrupted run and a straight one never ended with the same rng.pt.
    import shutil

    from trainer.config import Config
    from trainer.train.engine import Engine

    saved = []
    for name in ("a", "b"):
        base = tmp_path / name
        shutil.copytree(demo_model, base / "models" / "base")
        engine = Engine(base, Config())
        engine.start()
        saved.append((engine.checkpoint().path / "rng.pt").read_bytes())
    assert saved[0] == saved[1]
