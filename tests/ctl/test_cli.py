"""trainctl through real subprocesses: output channels, exit codes, one-line errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest
from helpers.common import OTHERS_PYTHON, REPO, as_user, trainctl

from trainer.exitcodes import ExitCode
from trainer.intake import enqueue
from trainer.spool import queue
from trainer.states import ItemState


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_init_then_status_with_no_arguments(tmp_path):
    base = tmp_path / "b"
    assert trainctl(base, "init").returncode == 0
    result = trainctl(base)
    assert result.returncode == ExitCode.NOT_RUNNING
    assert "not running" in result.stdout and "pending 0" in result.stdout


def test_uninitialised_base_dir_is_one_line_with_the_fix(tmp_path):
    result = trainctl(tmp_path / "nowhere", "status")
    assert result.returncode == ExitCode.CONFIG
    assert f"trainctl --base-dir {tmp_path / 'nowhere'} init" in _one_line_error(result)


def test_foreign_format_version_is_refused_clearly(layout):
    layout.format_file.write_bytes(b'{"format": "trainer-base", "version": 99}\n')
    result = trainctl(layout.root, "list")
    assert result.returncode == ExitCode.CONFIG
    assert "version 99" in _one_line_error(result)


def test_enqueue_prints_ids_on_stdout_and_diagnostics_on_stderr(layout, chat_file):
    result = trainctl(layout.root, "enqueue", str(chat_file()), str(chat_file()), "--priority", "high")
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 2 and all(queue.find(layout, i).priority.value == "high" for i in ids)
    assert "queued" in result.stderr
    quiet = trainctl(layout.root, "enqueue", "-q", str(chat_file()))
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_enqueue_of_an_invalid_file_exits_65_and_adds_nothing(layout, tmp_path, chat_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": 5}\n\xff\xfe\n')
    result = trainctl(layout.root, "enqueue", str(chat_file()), str(bad))
    assert result.returncode == ExitCode.DATA_INVALID
    assert f"{bad}:2:" in result.stderr and f"{bad}:3:" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert queue.counts(layout)["pending"] == 0, "a batch with a bad file queues none"


def test_enqueue_move_deletes_the_source_only_once_queued(layout, chat_file):
    src = chat_file()
    result = trainctl(layout.root, "enqueue", "--move", str(src))
    assert result.returncode == 0 and not src.exists()
    assert queue.find(layout, result.stdout.strip()).data_path.exists()


def test_enqueue_hold_and_the_pause_warning(layout, chat_file):
    assert trainctl(layout.root, "pause", "--reason", "upgrade").returncode == 0
    result = trainctl(layout.root, "enqueue", "--hold", str(chat_file()))
    assert result.returncode == 0 and "paused" in result.stderr
    assert queue.find(layout, result.stdout.strip()).state is ItemState.HELD


def test_item_commands_and_their_exit_codes(layout, chat_file):
    item_id = trainctl(layout.root, "enqueue", str(chat_file())).stdout.strip()
    assert trainctl(layout.root, "hold", item_id).returncode == 0
    assert trainctl(layout.root, "move", item_id, "--priority", "low").returncode == 0
    assert trainctl(layout.root, "release", item_id).returncode == 0
    listed = orjson.loads(trainctl(layout.root, "list", "--json").stdout)
    assert listed["schema_version"] == 1 and listed["items"][0]["priority"] == "low"
    shown = orjson.loads(trainctl(layout.root, "show", item_id, "--json").stdout)
    assert [e["event"] for e in shown["events"]] == ["enqueued", "held", "moved", "released"]
    assert trainctl(layout.root, "release", item_id).returncode == ExitCode.FAILED
    assert trainctl(layout.root, "remove", item_id).returncode == 0
    missing = trainctl(layout.root, "show", item_id)
    assert missing.returncode == ExitCode.NO_SUCH_ITEM and "no item" in _one_line_error(missing)
    tricky = trainctl(layout.root, "remove", "../../etc")
    assert tricky.returncode == ExitCode.NO_SUCH_ITEM and "not an item id" in _one_line_error(tricky)
    history = orjson.loads(trainctl(layout.root, "history", "--json").stdout)
    assert [e["event"] for e in history["events"]][-1] == "removed"


def test_retry_all_failed(layout, limits, chat_file):
    ids = []
    for _ in range(2):
        ids.append(enqueue.enqueue(layout, chat_file(), limits=limits).id)
        queue.claim_next(layout)
        queue.fail(layout, ids[-1], "boom")
    assert "boom" in trainctl(layout.root, "list", "--failed").stdout
    result = trainctl(layout.root, "retry", "--all-failed")
    assert result.returncode == 0 and result.stdout.split() == ids
    assert queue.counts(layout)["pending"] == 2


def test_usage_errors_exit_2(layout):
    assert trainctl(layout.root, "retry").returncode == ExitCode.USAGE
    assert trainctl(layout.root, "enqueue").returncode == ExitCode.USAGE
    assert trainctl(layout.root, "move", "20261128T194440.123456Z-3fa9c1b2").returncode == ExitCode.USAGE
    assert trainctl(layout.root, "frobnicate").returncode == ExitCode.USAGE


def test_status_reports_a_live_daemon_and_its_progress(layout, chat_file, fake_daemon):
    daemon = fake_daemon(layout.root, "--consume", "--train-seconds", "30")
    item_id = trainctl(layout.root, "enqueue", str(chat_file())).stdout.strip()
    deadline = time.monotonic() + 10
    while True:
        report = orjson.loads(trainctl(layout.root, "status", "--json").stdout)
        if report["item"] and report["item"].get("step"):
            break
        assert time.monotonic() < deadline
    assert report["daemon"]["liveness"] == "running" and report["daemon"]["pid"] == daemon.pid
    assert report["daemon"]["state"] == "training" and report["item"]["id"] == item_id
    assert report["item"]["eta_s"] is not None and report["queues"]["active"] == 1
    human = trainctl(layout.root, "status")
    assert human.returncode == 0 and f"running (pid {daemon.pid})" in human.stdout and "ETA" in human.stdout


def test_a_killed_daemon_is_reported_dead_never_training(layout, chat_file, fake_daemon):
    daemon = fake_daemon(layout.root, "--consume", "--train-seconds", "30")
    trainctl(layout.root, "enqueue", str(chat_file()))
    # Killed once it has said "training" (it claims first, then publishes its state).
    while orjson.loads(layout.daemon_state.read_bytes()).get("state") != "training":
        time.sleep(0.02)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.proc.wait()
    report = orjson.loads(trainctl(layout.root, "status", "--json").stdout)
    assert report["daemon"]["liveness"] == "not-running" and report["daemon"]["state"] is None
    assert report["daemon"]["last_state"] == "training"
    human = trainctl(layout.root, "status")
    assert human.returncode == ExitCode.NOT_RUNNING and "died" in human.stdout


def test_a_hung_daemon_shows_its_heartbeat_going_stale(layout, fake_daemon):
    layout.config_file.write_text("[daemon]\nstale_after_seconds = 1\n")
    fake_daemon(layout.root, "--no-heartbeat")
    time.sleep(1.5)
    report = orjson.loads(trainctl(layout.root, "status", "--json").stdout)
    assert report["daemon"]["liveness"] == "unresponsive"


def test_wait_for_an_item_then_for_idle(layout, chat_file, fake_daemon):
    fake_daemon(layout.root, "--consume")
    item_id = trainctl(layout.root, "enqueue", str(chat_file())).stdout.strip()
    assert trainctl(layout.root, "wait", item_id, "--timeout", "20").returncode == 0
    trainctl(layout.root, "enqueue", str(chat_file()))
    assert trainctl(layout.root, "wait", "--idle", "--timeout", "20").returncode == 0


def test_wait_exits_1_when_the_item_fails_via_skip(layout, chat_file, fake_daemon):
    fake_daemon(layout.root, "--consume", "--train-seconds", "60")
    item_id = trainctl(layout.root, "enqueue", str(chat_file())).stdout.strip()
    while queue.counts(layout)["active"] == 0:
        time.sleep(0.02)
    assert trainctl(layout.root, "skip", "--reason", "wrong data").returncode == 0
    assert trainctl(layout.root, "wait", item_id, "--timeout", "20").returncode == ExitCode.FAILED
    error = queue.find(layout, item_id).meta.errors[-1]
    assert error.kind == "skipped" and "skipped by request at step" in error.message and "wrong data" in error.message
    assert not (layout.control / "skip.json").exists()


def test_wait_never_hangs_on_a_dead_daemon(layout, chat_file, fake_daemon):
    item_id = trainctl(layout.root, "enqueue", str(chat_file())).stdout.strip()
    started = time.monotonic()
    assert trainctl(layout.root, "wait", item_id).returncode == ExitCode.NOT_RUNNING
    daemon = fake_daemon(layout.root)  # holds the lock but trains nothing
    waiter = subprocess.Popen([sys.executable, "-m", "ctl", "--base-dir", str(layout.root), "wait", "--idle"],
                              cwd=REPO, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert waiter.poll() is None, "waits while the daemon lives"
    os.kill(daemon.pid, signal.SIGKILL)
    assert waiter.wait(10) == ExitCode.NOT_RUNNING
    waiter.stderr.close()
    assert time.monotonic() - started < 30


def test_wait_times_out_with_75(layout, chat_file, fake_daemon):
    fake_daemon(layout.root)
    item_id = trainctl(layout.root, "enqueue", str(chat_file())).stdout.strip()
    assert trainctl(layout.root, "wait", item_id, "--timeout", "0.3").returncode == ExitCode.TIMEOUT


def test_skip_with_nothing_training_leaves_no_request(layout, fake_daemon):
    assert trainctl(layout.root, "skip").returncode == ExitCode.NOT_RUNNING
    fake_daemon(layout.root)
    result = trainctl(layout.root, "skip")
    assert result.returncode == ExitCode.FAILED and "nothing is training" in result.stderr
    assert os.listdir(layout.control) == []


def test_pause_resume_and_stop_requests(layout, fake_daemon):
    assert trainctl(layout.root, "stop").returncode == ExitCode.NOT_RUNNING
    assert trainctl(layout.root, "pause").returncode == 0
    assert (layout.control / "pause.json").exists()
    assert "paused" in trainctl(layout.root, "status").stdout
    assert trainctl(layout.root, "resume").returncode == 0 and not (layout.control / "pause.json").exists()
    fake_daemon(layout.root)
    assert trainctl(layout.root, "stop", "--reason", "maintenance").returncode == 0
    assert orjson.loads((layout.control / "stop.json").read_bytes())["reason"] == "maintenance"


def test_history_since_filters_and_rejects_nonsense(layout, chat_file):
    trainctl(layout.root, "enqueue", str(chat_file()))
    assert len(orjson.loads(trainctl(layout.root, "history", "--since", "1h", "--json").stdout)["events"]) == 1
    assert orjson.loads(trainctl(layout.root, "history", "--since", "2999-01-01", "--json").stdout)["events"] == []
    assert trainctl(layout.root, "history", "--since", "yesterday-ish").returncode == ExitCode.USAGE


def test_history_tolerates_a_torn_last_line(layout, chat_file):
    trainctl(layout.root, "enqueue", str(chat_file()))
    with open(sorted(layout.events_dir.glob("*.jsonl"))[-1], "ab") as fh:
        fh.write(b'{"t": "2026-11-28T10:00:00+00:00", "event": "cla')
    result = trainctl(layout.root, "history", "--json")
    assert result.returncode == 0 and len(orjson.loads(result.stdout)["events"]) == 1
    assert "unreadable" in result.stderr


def test_logs_without_a_journal_says_so(layout, tmp_path):
    layout.log_target.write_bytes(b'{"journal": true, "unit": "trainer.service"}')  # a daemon under systemd
    empty = tmp_path / "nobin"
    empty.mkdir()
    result = trainctl(layout.root, "logs", env={"PATH": str(empty)})
    assert result.returncode == ExitCode.FAILED and "journal" in _one_line_error(result)


def test_list_piped_into_head_does_not_spew_a_traceback(layout, limits, chat_file):
    for _ in range(30):
        enqueue.enqueue(layout, chat_file(), limits=limits)
    pipeline = subprocess.run(
        f"{sys.executable} -m ctl --base-dir {layout.root} list | head -1",
        shell=True, capture_output=True, text=True, cwd=REPO)
    assert pipeline.stdout.startswith("ID") and "Traceback" not in pipeline.stderr


def _nobody():
    import pwd

    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return None


@pytest.mark.skipif(os.geteuid() != 0 or _nobody() is None or shutil.which("setpriv") is None,
                    reason="needs root (to act as another user) and setpriv")
def test_a_user_outside_the_group_gets_one_line_naming_the_path(open_layout, chat_file):
    layout = open_layout
    src = open_layout.root.parent / "data.jsonl"
    shutil.copy(chat_file(), src)
    os.chmod(src, 0o644)
    uid = _nobody()
    as_nobody = as_user(uid)
    for args in (["enqueue", str(src)], ["pause"], ["list"]):
        result = subprocess.run([*as_nobody, OTHERS_PYTHON(), "-m", "ctl", "--base-dir", str(layout.root), *args],
                                capture_output=True, text=True, cwd=REPO)
        assert result.returncode == ExitCode.NO_PERMISSION, (args, result.stderr)
        line = _one_line_error(result)
        assert "permission denied" in line and str(layout.root) in line and "usermod" in line
        assert "FORMAT" not in line, "the base dir itself is readable: the refusal is the spool's"
    assert queue.counts(layout)["pending"] == 0 and os.listdir(layout.control) == []


def test_the_base_dir_comes_from_the_environment(layout, chat_file):
    result = subprocess.run([sys.executable, "-m", "ctl", "enqueue", str(chat_file())], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "TRAINER_BASE_DIR": str(layout.root)})
    assert result.returncode == 0 and queue.counts(layout)["pending"] == 1


def test_status_watch_refreshes_until_interrupted(layout, fake_daemon):
    fake_daemon(layout.root)
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps
    # it ignored; give the child the default, as a terminal would.
    watcher = subprocess.Popen([sys.executable, "-m", "ctl", "--base-dir", str(layout.root), "status", "--watch"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(2.5)
    watcher.send_signal(signal.SIGINT)
    out, err = watcher.communicate(timeout=10)
    assert watcher.returncode == 0 and "Traceback" not in err
    assert out.count("daemon      running") >= 2
