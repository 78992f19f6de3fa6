"""The daemon as a real process on the real tiny model: one test per failure mode."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest

pytest.importorskip("torch")

from helpers.common import OTHERS_PYTHON, REPO, as_user, trainctl, unprivileged_ids  # noqa: E402
from helpers.daemon_proc import DaemonProcess, enqueue_sample, metric_steps, small_config  # noqa: E402

from trainer.config import default_config_toml, load_config  # noqa: E402
from trainer.demo.sample_data import write_sample_chat  # noqa: E402
from trainer.exitcodes import ExitCode  # noqa: E402
from trainer.spool import queue  # noqa: E402
from trainer.spool.layout import init_base  # noqa: E402
from trainer.states import ItemState  # noqa: E402

CONFIG = small_config()


@pytest.fixture
def base(tmp_path, demo_model):
    layout, _ = init_base(tmp_path / "base", default_config_toml())
    layout.config_file.write_text(CONFIG)
    shutil.copytree(demo_model, layout.root / "models" / "base")
    return layout


@pytest.fixture
def daemons():
    started = []

    def start(layout, *args):
        daemon = DaemonProcess(layout, *args)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def test_second_daemon_refuses_to_start_naming_the_first(base, daemons):
    first = daemons(base)
    first.wait_ready()
    second = subprocess.run([sys.executable, "-m", "trainer.daemon", "run", "--base-dir", str(base.root)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert second.returncode == ExitCode.LOCKED
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert orjson.loads(base.log_target.read_bytes())["pid"] == first.pid, "where the log goes is still the first's"


def test_kill_9_mid_training_then_restart_resumes_the_item_at_its_checkpoint(base, daemons, tmp_path):
    item_id = enqueue_sample(base, tmp_path, records=600)
    daemon = daemons(base)
    daemon.wait_for(lambda: max(metric_steps(base, item_id), default=0) >= 5, what="5 steps")
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.kill()
    status = orjson.loads(trainctl(base.root, "status", "--json").stdout)
    assert status["daemon"]["liveness"] == "not-running", "a killed daemon is never reported training"
    assert status["daemon"]["last_state"] == "training"
    killed_at = max(metric_steps(base, item_id))
    again = daemons(base, "--exit-when-idle")
    assert again.finish() == 0, again.output()
    item = queue.find(base, item_id)
    assert item.state is ItemState.DONE and item.meta.attempts == 1
    steps = metric_steps(base, item_id)
    resumed_from = next(s for i, s in enumerate(steps) if i > 0 and s <= steps[i - 1])
    assert 2 <= resumed_from <= killed_at, f"resumed at step {resumed_from}, not from the start"
    assert orjson.loads(base.daemon_state.read_bytes())["state"] == "stopped", "stale state reset"


def test_sigterm_checkpoints_and_requeues_the_item_without_costing_an_attempt(base, daemons, tmp_path):
    item_id = enqueue_sample(base, tmp_path, records=600)
    daemon = daemons(base)
    daemon.wait_for(lambda: max(metric_steps(base, item_id), default=0) >= 3, what="3 steps")
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish(60) == 0, daemon.output()
    assert time.monotonic() - started < 30
    item = queue.find(base, item_id)
    assert item.state is ItemState.PENDING and item.meta.attempts == 0
    stopped_at = max(metric_steps(base, item_id))
    again = daemons(base, "--exit-when-idle")
    assert again.finish() == 0
    steps = metric_steps(base, item_id)
    assert steps[steps.index(stopped_at) + 1] == stopped_at + 1, "went on from the step it stopped at"
    assert steps.count(1) == 1, "never started the item again from the beginning"
    assert queue.find(base, item_id).state is ItemState.DONE


def test_a_file_that_keeps_killing_the_daemon_is_quarantined(base, daemons, tmp_path):
    poison = enqueue_sample(base, tmp_path, records=600, name="poison")
    after = enqueue_sample(base, tmp_path, records=20, seed=2, name="after")
    for _ in range(3):  # killed while training the same file, as a segfault or OOM kill would
        daemon = daemons(base)
        daemon.wait_for(lambda: queue.active_item(base) is not None and queue.active_item(base).id == poison
                        and daemon.step() >= 1, what="training the poison file")
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.kill()
    final = daemons(base, "--exit-when-idle")
    assert final.finish() == 0, final.output()
    failed = queue.find(base, poison)
    assert failed.state is ItemState.FAILED and "gave up after 3 interrupted attempts" in failed.meta.last_error.message
    assert queue.find(base, after).state is ItemState.DONE, "the queue moved on"


def test_pause_is_kept_across_a_restart_then_resume_and_skip_work(base, daemons, tmp_path):
    assert trainctl(base.root, "pause", "--reason", "maintenance").returncode == 0
    item_id = enqueue_sample(base, tmp_path, records=600)
    daemon = daemons(base)
    daemon.wait_for(lambda: daemon.state().get("state") == "paused", what="paused")
    time.sleep(0.5)
    assert queue.find(base, item_id).state is ItemState.PENDING, "nothing is claimed while paused"
    assert "maintenance" in trainctl(base.root, "status").stdout
    assert trainctl(base.root, "resume").returncode == 0
    daemon.wait_for(lambda: daemon.step() >= 2, what="training after resume")
    assert trainctl(base.root, "pause").returncode == 0
    daemon.wait_for(lambda: daemon.state().get("state") == "paused", what="paused mid-item")
    assert queue.find(base, item_id).state is ItemState.ACTIVE, "a pause keeps the item and the model"
    assert trainctl(base.root, "skip", "--reason", "wrong data").returncode == 0
    assert trainctl(base.root, "resume").returncode == 0
    assert trainctl(base.root, "wait", item_id, "--timeout", "60").returncode == ExitCode.FAILED
    error = queue.find(base, item_id).meta.last_error
    assert error.kind == "skipped" and "skipped by request at step" in error.message and "wrong data" in error.message


def test_skip_with_nothing_training_and_an_item_deleted_by_hand_before_its_claim(base, daemons, tmp_path):
    daemon = daemons(base)
    daemon.wait_ready()
    skipped = trainctl(base.root, "skip")
    assert skipped.returncode == ExitCode.FAILED and "nothing" in skipped.stderr
    assert not any(base.control.iterdir()), "no request is left behind to hit the next item"
    assert trainctl(base.root, "pause").returncode == 0
    daemon.wait_for(lambda: daemon.state().get("state") == "paused", what="paused")
    gone = enqueue_sample(base, tmp_path, records=20, name="gone")
    kept = enqueue_sample(base, tmp_path, records=20, seed=2, name="kept")
    shutil.rmtree(queue.find(base, gone).path)  # by hand, behind the daemon's back
    assert trainctl(base.root, "resume").returncode == 0
    assert trainctl(base.root, "wait", kept, "--timeout", "120").returncode == 0
    assert daemon.proc.poll() is None and "error in the main loop" not in daemon.output()
    assert daemon.state().get("last_error") is None


def test_stop_beats_skip_beats_pause_when_all_are_pending(base, daemons, tmp_path):
    from trainer.spool import control
    item_id = enqueue_sample(base, tmp_path, records=600)
    daemon = daemons(base)
    daemon.wait_for(lambda: daemon.step() >= 2, what="training")
    control.send_pause(base)
    control.send_skip(base, item_id)
    control.send_stop(base)
    assert daemon.finish(60) == 0
    assert queue.find(base, item_id).state is ItemState.PENDING, "stopped, not skipped"
    assert (base.control / "pause.json").exists() and not (base.control / "stop.json").exists()


def test_disk_below_the_threshold_blocks_without_burning_an_attempt_and_recovers(base, daemons, tmp_path):
    item_id = enqueue_sample(base, tmp_path, records=40)
    base.config_file.write_text(CONFIG.replace("min_free_bytes = 1048576", f"min_free_bytes = {1 << 60}"))
    daemon = daemons(base)
    daemon.wait_for(lambda: daemon.state().get("state") == "blocked", what="blocked")
    assert "disk: need" in daemon.state()["reason"]
    assert queue.find(base, item_id).state is ItemState.PENDING
    base.config_file.write_text(CONFIG)  # space "appears": the daemon re-reads its config on SIGHUP
    daemon.proc.send_signal(signal.SIGHUP)
    assert trainctl(base.root, "wait", item_id, "--timeout", "60").returncode == 0
    assert queue.find(base, item_id).meta.attempts == 0


def test_malformed_and_empty_inbox_files_fail_with_reasons_and_the_rest_trains(base, daemons, tmp_path):
    (base.inbox / "empty.jsonl").write_bytes(b"")
    (base.inbox / "broken.jsonl").write_bytes(b'{"text": "ok"}\n{not json\n')
    good = write_sample_chat(tmp_path / "good.jsonl", 30, seed=3)
    shutil.copy(good, base.inbox / ".good.jsonl")
    os.rename(base.inbox / ".good.jsonl", base.inbox / "good.jsonl")
    time.sleep(0.6)  # let the copied files settle
    daemon = daemons(base, "--exit-when-idle")
    assert daemon.finish() == 0, daemon.output()
    items = {i.meta.name: i for i in queue.list_items(base, list(ItemState))}
    assert items["good.jsonl"].state is ItemState.DONE
    assert items["empty.jsonl"].state is ItemState.FAILED and "empty" in items["empty.jsonl"].meta.last_error.message
    assert "broken.jsonl:2" in items["broken.jsonl"].meta.last_error.message


def test_consolidation_waits_until_nothing_is_training(base, daemons, tmp_path):
    item_id = enqueue_sample(base, tmp_path, records=300)
    daemon = daemons(base)
    daemon.wait_for(lambda: daemon.step() >= 1, what="training")
    assert trainctl(base.root, "consolidate").returncode == 0
    # Generous: the 300 records and the consolidation crawl on a busy 2-core machine.
    assert trainctl(base.root, "wait", "--idle", "--timeout", "600", timeout=660).returncode == 0
    daemon.wait_for(lambda: (base.root / "models" / "v001").exists(), what="the new version")
    done_at = next(e["t"] for e in orjson.loads(trainctl(base.root, "history", "--json").stdout)["events"]
                   if e["event"] == "done" and e["id"] == item_id)
    created = orjson.loads((base.root / "models" / "v001" / "trainer_version.json").read_bytes())["created_at"]
    assert created > done_at, "consolidated only after the item was done"


def test_a_broken_config_exits_with_the_config_code(base):
    base.config_file.write_text("[train]\nmax_lenght = 5\n")
    result = subprocess.run([sys.executable, "-m", "trainer.daemon", "run", "--base-dir", str(base.root)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == ExitCode.CONFIG and "train.max_lenght" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigint_is_as_graceful_as_sigterm(base, daemons, tmp_path):
    item_id = enqueue_sample(base, tmp_path, records=600)
    daemon = daemons(base)
    daemon.wait_for(lambda: daemon.step() >= 2, what="training")
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.finish(60) == 0
    item = queue.find(base, item_id)
    assert item.state is ItemState.PENDING and item.meta.attempts == 0


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(base, daemons, tmp_path):
    item_id = enqueue_sample(base, tmp_path, records=600)
    daemon = daemons(base)
    daemon.wait_for(lambda: daemon.step() >= 6, what="several checkpoints")
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.kill()
    from trainer.train.checkpoint import CheckpointStore

    newest = CheckpointStore(base.root / "checkpoints").committed()[-1]
    weights = newest.path / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a bit flip on disk
    weights.write_bytes(bytes(data))
    again = daemons(base, "--exit-when-idle")
    # 600 records to train again: it took over 120 s with other test runs on the machine.
    assert again.finish(600) == 0, again.output()
    assert newest.path.name in os.listdir(base.root / "checkpoints" / "quarantine")
    assert "does not match its sha256" in (base.root.parent / "daemon.log").read_text()
    assert queue.find(base, item_id).state is ItemState.DONE


def test_data_changed_on_disk_after_queueing_fails_the_item_at_once(base, daemons, tmp_path):
    item_id = enqueue_sample(base, tmp_path, records=20)
    item = queue.find(base, item_id)
    with open(item.data_path, "ab") as fh:
        fh.write(b'{"text": "sneaked in"}\n')
    daemon = daemons(base, "--exit-when-idle")
    assert daemon.finish() == 0
    failed = queue.find(base, item_id)
    assert failed.state is ItemState.FAILED and "changed on disk" in failed.meta.last_error.message
    assert failed.meta.attempts == 0, "deterministic: no retries burned"


def test_a_real_full_disk_blocks_the_daemon_until_space_is_freed(tmp_path, demo_model, daemons, small_tmpfs):
    mount = small_tmpfs("160m")
    layout, _ = init_base(mount / "base", default_config_toml())
    layout.config_file.write_text(CONFIG.replace("min_free_bytes = 1048576", "min_free_bytes = 8388608")
                                  .replace("[daemon]", "[daemon]\ndisk_check_seconds = 0.2"))
    shutil.copytree(demo_model, layout.root / "models" / "base")
    item_id = enqueue_sample(layout, tmp_path, records=100)
    filler = mount / "filler"
    stats = os.statvfs(mount)
    filler.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - (4 << 20)))  # leave 4 MiB
    daemon = daemons(layout)
    daemon.wait_for(lambda: daemon.state().get("state") == "blocked", what="blocked on disk")
    assert "disk: need" in daemon.state()["reason"]
    assert queue.find(layout, item_id).state is ItemState.PENDING
    filler.unlink()
    assert trainctl(layout.root, "wait", item_id, "--timeout", "90", timeout=120).returncode == 0
    assert queue.find(layout, item_id).meta.attempts == 0, "blocking burns no attempt"
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish(60) == 0


def test_the_snapshot_date_is_persisted_so_restarts_and_clock_jumps_do_not_repeat_it(base, tmp_path):
    from datetime import date, timedelta

    from trainer.daemon.service import Daemon as InProcess
    from trainer.spool.layout import open_base

    base.config_file.write_text(CONFIG.replace('at = "23:59"', 'at = "00:00"'))
    enqueue_sample(base, tmp_path, records=20)
    first = InProcess(open_base(base.root), load_config(base.config_file))
    assert first.run(exit_when_idle=True) == 0
    today = date.today().isoformat()
    assert os.listdir(base.root / "snapshots") == [today]
    assert orjson.loads((base.run / "housekeeping.json").read_bytes())["last_snapshot"] == today
    # A later day already recorded (the clock was ahead, then jumped back): nothing is taken.
    shutil.rmtree(base.root / "snapshots" / today)
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    (base.run / "housekeeping.json").write_bytes(orjson.dumps({"last_snapshot": tomorrow}))
    enqueue_sample(base, tmp_path, records=20, seed=5, name="second")
    second = InProcess(open_base(base.root), load_config(base.config_file))
    assert second.run(exit_when_idle=True) == 0
    assert os.listdir(base.root / "snapshots") == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the daemon as an unprivileged user")
def test_an_unreadable_queued_file_fails_naming_its_path_and_the_next_item_trains(open_layout, demo_model,
                                                                                     tmp_path):
    uid, gid = unprivileged_ids()
    probe = subprocess.run([*as_user(uid, gid), OTHERS_PYTHON(), "-c", "import trainer.daemon.service, torch"],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"uid {uid} cannot run the project's python here: {probe.stderr.strip()[-200:]}")
    layout = open_layout
    layout.config_file.write_text(CONFIG)
    shutil.copytree(demo_model, layout.root / "models" / "base")
    locked_id = enqueue_sample(layout, tmp_path, records=20, name="locked")
    next_id = enqueue_sample(layout, tmp_path, records=20, seed=2, name="next")
    for directory, _, names in os.walk(layout.root):  # the daemon's base dir is its own
        for path in [directory, *(os.path.join(directory, name) for name in names)]:
            os.chown(path, uid, gid, follow_symlinks=False)
    locked = queue.find(layout, locked_id).data_path
    content = locked.read_bytes()
    os.chown(locked, 0, 0)  # someone else's file, private to them
    os.chmod(locked, 0o600)
    log_path = layout.root.parent / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.run([*as_user(uid, gid), OTHERS_PYTHON(), "-m", "trainer.daemon", "run", "--base-dir",
                                 str(layout.root), "--exit-when-idle"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, timeout=180)
    output = log_path.read_text(errors="replace")
    assert daemon.returncode == 0, output
    failed = queue.find(layout, locked_id)
    assert failed.state is ItemState.FAILED, output
    message = failed.meta.last_error.message
    assert "permission denied" in message and str(failed.data_path) in message, message
    assert failed.meta.attempts == 0, "a permission problem is not retried in a loop"
    assert f"{failed.data_path}: permission denied" in output, "the log names the file"
    assert output.count(f"{locked_id} failed") == 1 and "Traceback" not in output, output
    assert failed.data_path.read_bytes() == content, "nothing the user gave is lost"
    assert queue.find(layout, next_id).state is ItemState.DONE, output
    # Made readable, it is retried and trains (as the spool's owner would do it).
    os.chown(failed.data_path, uid, gid)
    assert trainctl(layout.root, "retry", locked_id).returncode == 0
    with open(log_path, "ab") as log:
        again = subprocess.run([*as_user(uid, gid), OTHERS_PYTHON(), "-m", "trainer.daemon", "run", "--base-dir",
                                str(layout.root), "--exit-when-idle"],
                               stdout=log, stderr=subprocess.STDOUT, cwd=REPO, timeout=180)
    assert again.returncode == 0, log_path.read_text(errors="replace")
    assert queue.find(layout, locked_id).state is ItemState.DONE


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the daemon as an unprivileged user")
def test_a_queued_item_directory_owned_by_someone_else_is_left_alone_and_the_queue_moves_on(
        open_layout, demo_model, tmp_path):
    uid, gid = unprivileged_ids()
    layout = open_layout
    layout.config_file.write_text(CONFIG)
    shutil.copytree(demo_model, layout.root / "models" / "base")
    stuck_id = enqueue_sample(layout, tmp_path, records=20, name="stuck")
    next_id = enqueue_sample(layout, tmp_path, records=20, seed=2, name="next")
    for directory, _, names in os.walk(layout.root):
        for path in [directory, *(os.path.join(directory, name) for name in names)]:
            os.chown(path, uid, gid, follow_symlinks=False)
    stuck = queue.find(layout, stuck_id).path
    for path in (stuck, *stuck.iterdir()):
        os.chown(path, 0, 0)
    os.chmod(stuck, 0o700)  # the daemon can neither read nor move it
    log_path = layout.root.parent / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen([*as_user(uid, gid), OTHERS_PYTHON(), "-m", "trainer.daemon", "run",
                                   "--base-dir", str(layout.root)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while queue.find(layout, next_id).state is not ItemState.DONE:
            assert daemon.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.2)
        time.sleep(1.5)  # a few more polls of the queue: still one line, no error loop
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
    output = log_path.read_text(errors="replace")
    assert code == 0, output
    assert output.count(f"{stuck}: cannot take it") == 1 and "error in the main loop" not in output, output
    assert queue.find(layout, stuck_id).state is ItemState.PENDING  # untouched, still queued
