"""Retention of checkpoints, snapshots and versions: a removal killed halfway never leaves a
half-deleted directory under its real name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from helpers.common import REPO

from trainer.spool.fsutil import remove_dirs, sweep_deleting

KILLED_MID_RMTREE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from trainer.spool.fsutil import remove_dirs

    unlinked = 0
    real_unlink = os.unlink

    def unlink(*args, **kwargs):
        global unlinked
        real_unlink(*args, **kwargs)
        unlinked += 1
        if unlinked == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    os.unlink = unlink
    remove_dirs(Path(sys.argv[1]), ["v001"])
""")


def test_a_removal_killed_halfway_leaves_only_a_deleting_dir_that_the_next_pass_sweeps(tmp_path):
    models = tmp_path / "models"
    for version in ("v001", "v002"):
        (models / version).mkdir(parents=True)
        for n in range(10):
            (models / version / f"shard-{n}.safetensors").write_bytes(b"x" * 100)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_RMTREE, str(models)], cwd=REPO)
    assert killed.returncode == -signal.SIGKILL
    assert sorted(os.listdir(models)) == [".deleting-v001", "v002"], "no half-deleted v001 under its name"
    assert 0 < len(os.listdir(models / ".deleting-v001")) < 10, "killed in the middle of the removal"
    remove_dirs(models, [])  # any later retention pass finishes the job
    assert sorted(os.listdir(models)) == ["v002"]


def test_versions_and_snapshot_days_ignore_a_directory_being_deleted(tmp_path):
    import pytest

    pytest.importorskip("torch")
    from trainer.train.releases import versions

    (tmp_path / ".deleting-v003").mkdir()
    (tmp_path / "v001").mkdir()
    assert versions(tmp_path) == ["v001"]
    assert sweep_deleting(tmp_path) == [".deleting-v003"]
