"""Versions and rollback under random kill -9 (the quick version of bench/chaos_versions.py):
after the run, each version's lineage is exactly the items done on its line between its
parent and it (from the event log), each rollback queued again exactly the items after its
version, and no kill left a rolled-back line with anything but the version's weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import chaos_versions  # noqa: E402


def test_killed_at_random_the_lineage_stays_exact_and_a_rollback_never_mixes_lines(tmp_path, demo_model):
    report = chaos_versions.experiment(tmp_path, demo_model, rounds=6, kills=4, seed=5)
    assert report["problems"] == [], report
    assert len(report["kills"]) == 4 and len(report["versions"]) >= 3, report
    assert report["rollbacks"] >= 1 and report["requeued_copies"] >= 1, report
