"""Faults against the real daemon on the real tiny model: the disk filling up mid-training, an
inbox it may not write, checkpoints damaged on disk while it was down, a hung daemon.

(The kill -9 runs are tests/test_chaos_kill.py; a queue file unreadable to a non-root daemon
is in tests/test_daemon.py.)
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest

pytest.importorskip("torch")

from helpers.common import OTHERS_PYTHON, REPO, as_user, trainctl  # noqa: E402
from helpers.daemon_proc import DaemonProcess, enqueue_sample, metric_steps, small_config  # noqa: E402

from trainer.config import default_config_toml  # noqa: E402
from trainer.demo.sample_data import write_sample_chat  # noqa: E402
from trainer.spool import queue  # noqa: E402
from trainer.spool.layout import init_base  # noqa: E402
from trainer.states import ItemState  # noqa: E402
from trainer.train.checkpoint import CheckpointStore  # noqa: E402

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to mount a tmpfs, or to become another user)")


def _config(every: int = 2) -> str:
    # A fast stale-heartbeat verdict (the hang test), fast disk re-checks, and a free-space
    # floor the small tmpfs can fall below.
    return small_config(checkpoint={"every_steps": every, "keep_last": 3}, spool={"inbox_settle_seconds": 0.2},
                        daemon={"stale_after_seconds": 1, "min_free_bytes": 8 << 20, "disk_check_seconds": 0.2})


def _setup(layout, demo_model, every: int = 2):
    layout.config_file.write_text(_config(every))
    shutil.copytree(demo_model, layout.root / "models" / "base")
    return layout


@pytest.fixture
def base(tmp_path, demo_model):
    layout, _ = init_base(tmp_path / "base", default_config_toml())
    return _setup(layout, demo_model)


@pytest.fixture
def daemons():
    started = []

    def start(layout, *args, prefix=(), env=None):
        daemon = _Daemon(layout, *args, prefix=prefix, env=env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            os.kill(daemon.pid, signal.SIGCONT)  # a stopped process cannot die of SIGKILL until continued
        daemon.kill()


class _Daemon(DaemonProcess):
    """DaemonProcess, optionally started through a wrapper (setpriv, to run as another user)."""

    def __init__(self, layout, *args, prefix=(), env=None) -> None:
        self.layout = layout
        self.log = open(layout.root.parent / "daemon.log", "ab")
        argv = [*prefix, OTHERS_PYTHON() if prefix else sys.executable, "-m", "trainer.daemon", "run", "--base-dir", str(layout.root), *args]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, **(env or {})})


def _staging(layout) -> list[str]:
    return [n for n in os.listdir(layout.root / "checkpoints") if n.startswith(".staging-")]


def _events(layout, item_id) -> list[str]:
    from trainer.spool import events

    return [e["event"] for e in events.read(layout, item_id=item_id).events]


# --- disk full ---------------------------------------------------------------------------

@pytest.fixture
def small_disk(small_tmpfs):
    return small_tmpfs("160m")


def _fill(mount: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the filesystem, at once (fallocate: no slow write)."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:  # the daemon writes too: if it took the room meanwhile, ask for a little less
            stats = os.statvfs(mount)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size + stats.f_bavail * stats.f_frsize - leave)
                return filler
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                leave += 1 << 20
    finally:
        os.close(fd)


@needs_root
def test_a_disk_filled_mid_training_blocks_then_resumes_by_itself_without_burning_an_attempt(
        small_disk, tmp_path, demo_model, daemons):
    layout, _ = init_base(small_disk / "base", default_config_toml())
    _setup(layout, demo_model, every=8)  # saves are rare: the filler lands between two of them
    item_id = enqueue_sample(layout, tmp_path, records=600)
    daemon = daemons(layout)
    latest = layout.root / "checkpoints" / "LATEST"
    daemon.wait_for(lambda: latest.exists() and daemon.step() >= 1, what="a first checkpoint")
    saved = latest.read_text()
    daemon.wait_for(lambda: latest.read_text() != saved, what="a second checkpoint", timeout=120)
    filler = _fill(small_disk, leave=4 << 20)  # just after a save: the next one is 8 steps away
    daemon.wait_for(lambda: daemon.state().get("state") == "blocked", what="blocked on disk")
    assert "disk: need" in daemon.state()["reason"]
    stalled = max(metric_steps(layout, item_id))
    time.sleep(1)
    assert max(metric_steps(layout, item_id)) == stalled, "no training while blocked"
    assert _staging(layout) == [], "no partial checkpoint"
    item = queue.find(layout, item_id)
    assert item.state is ItemState.ACTIVE and item.meta.attempts == 0, "it waits with its item, no attempt burned"
    status = orjson.loads(trainctl(layout.root, "status", "--json").stdout)
    assert status["daemon"]["state"] == "blocked" and status["daemon"]["liveness"] == "running", \
        "blocked but heartbeating"
    filler.unlink()
    assert trainctl(layout.root, "wait", item_id, "--timeout", "300", timeout=330).returncode == 0
    item = queue.find(layout, item_id)
    assert item.state is ItemState.DONE and item.meta.attempts == 0
    assert "requeued" not in _events(layout, item_id)
    steps = metric_steps(layout, item_id)
    assert steps == sorted(steps) and len(steps) == len(set(steps)), "no step trained twice"
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish(60) == 0


@needs_root
def test_a_disk_filled_during_a_checkpoint_write_leaves_no_partial_checkpoint_and_recovers(
        small_disk, tmp_path, demo_model, daemons):
    layout, _ = init_base(small_disk / "base", default_config_toml())
    _setup(layout, demo_model, every=8)
    item_id = enqueue_sample(layout, tmp_path, records=1200)
    daemon = daemons(layout)
    daemon.wait_for(lambda: daemon.step() >= 1, what="training")
    filler = None
    deadline = time.monotonic() + 120
    # Fill the disk the moment a save starts. A save caught at its very end still completes, and
    # retention then frees the oldest checkpoint (room for the next save): so fill again at each
    # save until one is refused (on a fast machine a save lasts a few milliseconds).
    while time.monotonic() < deadline and daemon.state().get("state") != "blocked":
        if _staging(layout):
            filler = _fill(small_disk, leave=1 << 20)
        time.sleep(0.001)
    assert filler is not None, "saw no checkpoint being written"
    daemon.wait_for(lambda: daemon.state().get("state") == "blocked", what="blocked on disk")
    assert "disk: need" in daemon.state()["reason"]
    assert _staging(layout) == [], "the interrupted save removed its staging dir"
    for checkpoint in CheckpointStore(layout.root / "checkpoints").committed():
        assert (checkpoint.path / "manifest.json").exists()
    filler.unlink()
    assert trainctl(layout.root, "wait", item_id, "--timeout", "300", timeout=330).returncode == 0
    item = queue.find(layout, item_id)
    assert item.state is ItemState.DONE
    assert item.meta.attempts == 0, f"a full disk is not the item's fault: {item.meta.errors}"
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish(60) == 0


# --- I/O and permission faults --------------------------------------------------------------

def _as_nobody(layout) -> dict:
    """Hand the base dir to the unprivileged user (root ignores file modes)."""
    home = layout.root.parent / "home"
    home.mkdir(exist_ok=True)
    for path in (layout.root, home):
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(path)], check=True)
    return {"prefix": tuple(as_user(NOBODY)),
            "env": {"HOME": str(home)}}


@needs_root
def test_a_read_only_inbox_is_logged_with_its_path_and_the_queue_goes_on(open_layout, demo_model, tmp_path,
                                                                           daemons):
    layout = _setup(open_layout, demo_model)
    queued = enqueue_sample(layout, tmp_path, records=20)
    dropped = write_sample_chat(layout.inbox / "dropped.jsonl", 20, seed=4)
    os.utime(dropped, (time.time() - 60, time.time() - 60))  # settled
    user = _as_nobody(layout)
    os.chmod(layout.inbox, 0o555)  # nobody may take files out of it
    daemon = daemons(layout, **user)
    daemon.wait_ready()
    assert trainctl(layout.root, "wait", queued, "--timeout", "120", timeout=150).returncode == 0, daemon.output()
    assert dropped.exists(), "the file stays where it is, nothing lost"
    daemon.wait_for(lambda: f"{dropped}" in daemon.output() and "Permission denied" in daemon.output(),
                    what="the inbox error, with the path")
    # No crash loop, no busy loop: the daemon stays up and mostly sleeps.
    process = psutil.Process(daemon.pid)
    before = process.cpu_times()
    time.sleep(3)
    after = process.cpu_times()
    busy = (after.user + after.system) - (before.user + before.system)
    errors = daemon.output().count("cannot take")
    assert daemon.proc.poll() is None
    assert busy < 1.5, f"the daemon spun for {busy:.1f} s of CPU in 3 s on a file it cannot take"
    assert errors == 1, f"{errors} log lines about one file (logged once, tried at every heartbeat)"
    os.chmod(layout.inbox, 0o2770)
    daemon.wait_for(lambda: not dropped.exists(), what="the file taken once the inbox is writable")
    assert trainctl(layout.root, "wait", "--idle", "--timeout", "120", timeout=150).returncode == 0
    names = {i.meta.name: i.state for i in queue.list_items(layout, list(ItemState))}
    assert names["dropped.jsonl"] is ItemState.DONE
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish(60) == 0


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))


def test_checkpoints_truncated_and_bit_flipped_while_down_are_quarantined_and_training_goes_on(
        base, daemons, tmp_path):
    item_id = enqueue_sample(base, tmp_path, records=600)
    daemon = daemons(base)
    daemon.wait_for(lambda: len(CheckpointStore(base.root / "checkpoints").committed()) >= 3, what="3 checkpoints")
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.kill()
    store = CheckpointStore(base.root / "checkpoints")
    *_, older, previous, newest = store.committed()
    _truncate(newest.path / "trainable.safetensors")  # a torn write the disk acknowledged
    _flip_a_bit(previous.path / "optimizer.pt")  # silent corruption
    again = daemons(base, "--exit-when-idle")
    assert again.finish(180) == 0, again.output()
    log = (base.root.parent / "daemon.log").read_text()
    quarantine = base.root / "checkpoints" / "quarantine"
    for broken, why in ((newest, "trainable.safetensors has"), (previous, "optimizer.pt does not match")):
        assert broken.path.name in os.listdir(quarantine)
        assert why in (quarantine / f"{broken.path.name}.reason").read_text()
        assert str(quarantine / broken.path.name) in log, "logged with the path"
    assert f"restored checkpoint {older.path.name}" in log
    assert log.count("ready (pid") == 2, "one start after the damage, no crash loop"
    item = queue.find(base, item_id)
    assert item.state is ItemState.DONE and item.meta.attempts == 1
    steps = metric_steps(base, item_id)
    resumed_at = next(s for i, s in enumerate(steps) if i and s <= steps[i - 1])
    assert resumed_at == older.manifest["step"] + 1, "resumed from the newest checkpoint that verifies"


# --- hang ------------------------------------------------------------------------------------

def test_a_stopped_daemon_shows_as_unresponsive_and_recovers_when_continued(base, daemons, tmp_path):
    # 100 steps: long enough that the item is still training when the daemon is stopped, on a
    # quiet machine too (25 steps were all done in the time one trainctl status took).
    item_id = enqueue_sample(base, tmp_path, records=600)
    daemon = daemons(base)
    daemon.wait_for(lambda: daemon.step() >= 2, what="training")

    def liveness() -> dict:
        return orjson.loads(trainctl(base.root, "status", "--json").stdout)["daemon"]

    assert liveness()["liveness"] == "running"
    os.kill(daemon.pid, signal.SIGSTOP)  # a step that never returns, as far as anyone can tell
    try:
        stalled_at = max(metric_steps(base, item_id))
        time.sleep(2.5)  # stale_after_seconds = 1
        hung = liveness()
        assert hung["liveness"] == "unresponsive" and hung["heartbeat_age_s"] > 1
        assert hung["pid"] == daemon.pid, "the lock holder is named"
        text = trainctl(base.root, "status").stdout
        assert "UNRESPONSIVE" in text and f"pid {daemon.pid}" in text, text
        assert max(metric_steps(base, item_id)) == stalled_at
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    daemon.wait_for(lambda: max(metric_steps(base, item_id)) > stalled_at, what="training again")
    daemon.wait_for(lambda: liveness()["liveness"] == "running", what="a fresh heartbeat")
    assert trainctl(base.root, "wait", item_id, "--timeout", "120", timeout=150).returncode == 0
    assert queue.find(base, item_id).meta.attempts == 0, "a hang that ends costs nothing"
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish(60) == 0
