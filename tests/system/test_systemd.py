"""The units under a real systemd (booted in private namespaces, see systemd_box.py), installed
with the real `trainctl install-unit`, running the real daemon on the tiny demo model.

The unit files are the shipped ones; a drop-in shortens the timers (watchdog, restart delay)
so that a test takes seconds, as an operator's drop-in would.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers.common import REPO
from helpers.daemon_proc import small_config
from helpers.systemd_box import SystemdBox, unavailable

from trainer.demo.sample_data import write_sample_chat

BASE = "/var/lib/trainer"
# The service's venv, made inside the box. The test venv itself may sit on an interpreter under
# /root (pyenv), which the unit's ProtectHome=yes hides, exactly as it would hide a user's; the
# service venv uses a system Python of the same version and sees the test venv's packages.
VENV = Path("/opt/trainer")
SOURCE = Path("/opt/trainer-source")  # the checkout, as the box sees it
TRAINCTL = str(VENV / "bin" / "trainctl")
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
# As pip writes console scripts: guarded, because the distributed launcher's workers (spawned
# interpreters) import the main script again.
ENTRY_SCRIPT = """#!{venv}/bin/python
import sys
from {module} import main
if __name__ == "__main__":
    sys.exit(main())
"""


def _why_not() -> str | None:
    reason = unavailable()
    if reason is None and not SYSTEM_PYTHON.exists():
        reason = f"{SYSTEM_PYTHON} is missing (the service venv needs a Python outside home directories)"
    if reason is None and REPO not in Path(sys.prefix).parents:
        reason = "the test venv is not inside the checkout (make test makes .venv there)"
    return reason


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=f"no systemd box here: {_why_not()}")


def make_service_venv(box) -> None:
    box.run(str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(VENV))
    # The test venv's packages and the checkout, through the box's binding of the checkout
    # (the test venv's own editable-install path may be under /tmp, which PrivateTmp hides).
    site_packages = next(Path(sys.prefix, "lib").glob("python3*/site-packages")).relative_to(REPO)
    inner = next(box.path(str(VENV / "lib")).glob("python3*/site-packages"))
    (inner / "test-venv.pth").write_text(
        f"{SOURCE}\nimport site; site.addsitedir({str(SOURCE / site_packages)!r})\n")
    for name, module in (("trainer", "trainer.daemon.main"), ("trainctl", "ctl.cli")):
        script = box.path(str(VENV / "bin" / name))
        script.write_text(ENTRY_SCRIPT.format(venv=VENV, module=module))
        script.chmod(0o755)


CONFIG = small_config(daemon={"heartbeat_seconds": 0.5})

# What an operator's drop-in would shorten for a small model: seconds instead of minutes.
TEST_TIMERS = """[Service]
WatchdogSec=6s
RestartSec=1s
TimeoutAbortSec=15s
TimeoutStopSec=60s
"""


@pytest.fixture(scope="module")
def box(tmp_path_factory, demo_model):
    share = tmp_path_factory.mktemp("box")
    shutil.copytree(demo_model, share / "model")
    box = SystemdBox(share, REPO)
    try:
        box.boot()
        make_service_venv(box)
        installed = box.run(TRAINCTL, "install-unit")
        box.install_log = installed.stderr
        box.path("/etc/trainer/config.toml").write_text(CONFIG)
        for unit in ("trainer.service", "trainer@.service"):
            dropin = box.path(f"/etc/systemd/system/{unit}.d")
            dropin.mkdir(parents=True)
            (dropin / "test-timers.conf").write_text(TEST_TIMERS)
        box.systemctl("daemon-reload")
        box.run("useradd", "--no-create-home", "--groups", "trainer", "alice")
        box.run("useradd", "--no-create-home", "mallory")
        yield box
    finally:
        box.close()


@pytest.fixture
def unit(box):
    """A stopped trainer.service over a fresh base dir holding only the model."""
    for name in ("trainer.service", "trainer@x.service"):
        box.systemctl("stop", name, check=False)
        box.systemctl("reset-failed", name, check=False)
    box.run("rm", "-rf", BASE)
    box.run("mkdir", "-p", f"{BASE}/models")
    box.run("cp", "-r", "/srv/share/model", f"{BASE}/models/base")
    box.run("chown", "-R", "trainer:trainer", BASE)
    yield box
    box.systemctl("stop", "trainer.service", check=False)


def trainctl(box, *args, user="alice", check=True):
    return box.run(TRAINCTL, "--base-dir", BASE, *args, user=user, check=check, timeout=400)


def enqueue(box, name: str, records: int, seed: int = 1) -> str:
    """Write a chat file inside the box and queue it as a group member; returns the id."""
    path = f"/tmp/{name}.jsonl"
    write_sample_chat(box.path(path), records, seed=seed)
    box.path(path).chmod(0o644)
    return trainctl(box, "enqueue", path).stdout.strip()


def state(box) -> dict:
    try:
        return orjson.loads(box.path(f"{BASE}/run/daemon.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}


def item_meta(box, item_id: str) -> dict:
    return orjson.loads(trainctl(box, "show", item_id, "--json").stdout)["item"]


def item_events(box, item_id: str) -> list[dict]:
    return orjson.loads(trainctl(box, "show", item_id, "--json").stdout)["events"]


def item_state(box, item_id: str) -> str:
    return item_meta(box, item_id)["state"]


def main_pid(box, unit="trainer.service") -> int:
    return int(box.show(unit, "MainPID")["MainPID"])


def wait_ready_again(box, old_pid: int) -> None:
    """Restarted: a new main pid, READY sent (active), and its state file written."""
    def ready():
        shown = box.show("trainer.service", "ActiveState", "MainPID")
        return (shown["ActiveState"] == "active" and int(shown["MainPID"]) not in (0, old_pid)
                and state(box).get("pid") == int(shown["MainPID"]))
    box.wait_for(ready, timeout=120, what="the restarted daemon to be ready")


def training_step(box) -> int:
    item = state(box).get("item") or {}
    return item.get("step") or 0


def metric_steps(box, item_id: str) -> list[int]:
    path = box.path(f"{BASE}/metrics/{item_id}.jsonl")
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
    return [line["step"] for line in lines if "kind" not in line]  # an "eval" line is not a step


def start_and_wait_training(box, records=800) -> str:
    # 800 records, about 130 steps: still training when the test acts, on a quiet machine too
    # (160 records were all trained in the second a poll of the state file took).
    box.systemctl("start", "trainer")
    item_id = enqueue(box, "long", records)
    box.wait_for(lambda: training_step(box) >= 5, what="training past step 5")
    return item_id


# --- tests ---------------------------------------------------------------------------------

def test_install_unit_creates_the_user_and_units_systemd_accepts(box):
    assert "ran       " in box.install_log and "daemon-reload" in box.install_log
    assert box.run("getent", "passwd", "trainer").stdout.startswith("trainer:")
    for unit in ("trainer.service", "trainer@0.service"):
        assert box.show(unit, "LoadState")["LoadState"] == "loaded"
    execstart = box.show("trainer.service", "ExecStart")["ExecStart"]
    assert f"{VENV}/bin/trainer" in execstart
    # Installing again keeps the operator's config.
    again = box.run(TRAINCTL, "install-unit").stderr
    assert "kept" in again and box.path("/etc/trainer/config.toml").read_text() == CONFIG


def test_start_is_active_only_after_ready_and_status_agrees_with_systemd(unit):
    box = unit
    box.systemctl("start", "--no-block", "trainer")
    seen = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        active = box.show("trainer.service", "ActiveState")["ActiveState"]
        seen.add(active)
        if active == "active":
            break
        assert active in ("activating", "inactive"), active
        time.sleep(0.05)
    assert "activating" in seen  # recovery and the model load happen before READY
    # Once systemd says active, the daemon has passed recovery and loaded the model.
    assert state(box)["state"] in ("idle", "paused")
    assert state(box).get("model_load_s") is not None

    shown = box.show("trainer.service", "StatusText", "NRestarts", "MainPID", "Type", "NotifyAccess")
    assert shown["StatusText"].startswith("idle")
    assert shown["NRestarts"] == "0"
    status = orjson.loads(trainctl(box, "status", "--json").stdout)
    assert status["daemon"]["liveness"] == "running"
    assert status["daemon"]["pid"] == int(shown["MainPID"])
    assert shown["StatusText"].startswith(status["daemon"]["state"])
    assert "idle" in box.systemctl("status", "trainer", check=False).stdout
    # ExecReload: SIGHUP re-reads the config, same process.
    box.systemctl("reload", "trainer")
    box.wait_for(lambda: any("config reloaded" in str(e.get("MESSAGE")) for e in box.journal("trainer.service")),
                 what="the reload")
    assert main_pid(box) == int(shown["MainPID"])


def test_items_enqueued_with_trainctl_are_trained_to_done(unit):
    box = unit
    box.systemctl("start", "trainer")
    ids = [enqueue(box, f"small{i}", 20, seed=i) for i in range(2)]
    for item_id in ids:
        trainctl(box, "wait", item_id, "--timeout", "300")
        assert item_state(box, item_id) == "done"
    assert box.show("trainer.service", "ActiveState")["ActiveState"] == "active"


def test_trainctl_logs_reads_the_daemon_s_journal_and_no_log_file_is_written(unit):
    box = unit
    box.systemctl("start", "trainer")
    item_id = enqueue(box, "logged", 20)
    trainctl(box, "wait", item_id, "--timeout", "300")
    target = orjson.loads(box.path(f"{BASE}/run/log.json").read_bytes())
    assert target["journal"] is True and target["unit"] == "trainer.service"
    assert not box.path(f"{BASE}/logs/trainer.log").exists()
    shown = trainctl(box, "logs", "-n", "300", user=None).stdout  # root: may read the system journal
    assert "ready (pid" in shown and f"done {item_id}" in shown
    about = trainctl(box, "logs", "--item", item_id, "-n", "300", user=None).stdout.splitlines()
    assert any(f"done {item_id}" in line for line in about) and all(item_id in line for line in about), about
    assert any("checkpoint" in line for line in about), "tagged TRAINER_ITEM= though its text names no item"


def test_kill_9_of_the_main_pid_restarts_and_resumes_from_the_checkpoint(unit):
    box = unit
    item_id = start_and_wait_training(box)
    pid = main_pid(box)
    box.run("kill", "-9", str(pid))
    box.wait_for(lambda: box.show("trainer.service", "NRestarts")["NRestarts"] == "1", what="a restart")
    wait_ready_again(box, pid)
    trainctl(box, "wait", item_id, "--timeout", "300")
    assert item_state(box, item_id) == "done"
    steps = metric_steps(box, item_id)
    # The restarted daemon went on from its last checkpoint: step 1 was trained once only, and
    # every step up to the last was trained (the ones after the checkpoint again).
    done = [e for e in item_events(box, item_id) if e["event"] == "done"]
    assert steps.count(1) == 1 and set(steps) == set(range(1, done[0]["steps"] + 1)), (steps, done)
    resumed = [e["MESSAGE"] for e in box.journal("trainer.service") if "resuming at step" in str(e.get("MESSAGE"))]
    assert resumed, "the restarted daemon did not resume the item mid-file"
    assert item_meta(box, item_id)["attempts"] == 1


def test_a_hung_daemon_is_killed_by_the_watchdog_with_a_traceback_and_restarted(unit):
    box = unit
    item_id = start_and_wait_training(box)
    pid = main_pid(box)
    box.run("kill", "-STOP", str(pid))  # the loop stops making progress: no more pings
    box.wait_for(lambda: box.show("trainer.service", "NRestarts")["NRestarts"] == "1", timeout=60,
                 what="the watchdog's restart")
    wait_ready_again(box, pid)
    messages = [entry.get("MESSAGE", "") for entry in box.journal("trainer.service")]
    text = "\n".join(m if isinstance(m, str) else "" for m in messages)
    assert "Watchdog timeout" in text
    # PYTHONFAULTHANDLER: every thread's stack, on the watchdog's SIGABRT, in the journal.
    assert "Fatal Python error: Aborted" in text and "File " in text
    trainctl(box, "wait", item_id, "--timeout", "300")
    assert item_state(box, item_id) == "done"


def test_systemctl_stop_mid_item_checkpoints_and_leaves_the_item_queued(unit):
    box = unit
    item_id = start_and_wait_training(box)
    started = time.monotonic()
    box.systemctl("stop", "trainer")
    took = time.monotonic() - started
    shown = box.show("trainer.service", "ActiveState", "Result", "ExecMainStatus")
    assert shown == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, shown
    assert took < 60  # the drop-in's TimeoutStopSec: it was not killed
    meta = item_meta(box, item_id)
    assert meta["state"] == "pending" and meta["attempts"] == 0
    requeued = [e for e in item_events(box, item_id) if e["event"] == "requeued"]
    assert requeued and "stopping" in requeued[-1]["reason"]
    # The stop wrote a checkpoint past the first steps: the item resumes there, not at step 1.
    last = state(box)
    assert last["state"] == "stopped" and last["last_checkpoint"]["step"] >= 5, last


def test_a_broken_config_fails_once_with_a_clear_message_and_no_restart_loop(unit):
    box = unit
    config = box.path("/etc/trainer/config.toml")
    config.write_text(CONFIG + "\n[train]\nlearning_rate = 'fast'\n")
    try:
        assert box.systemctl("start", "trainer", check=False).returncode != 0
        time.sleep(3)  # three RestartSec: a restart loop would show by now
        shown = box.show("trainer.service", "ActiveState", "NRestarts", "ExecMainStatus")
        assert shown == {"ActiveState": "failed", "NRestarts": "0", "ExecMainStatus": "78"}, shown
        messages = [e.get("MESSAGE") for e in box.journal("trainer.service") if e.get("_PID") != "1"]
        assert any(isinstance(m, str) and "config" in m and "trainer:" in m for m in messages), messages
    finally:
        config.write_text(CONFIG)


def test_a_second_daemon_on_the_same_base_dir_refuses_and_does_not_restart(unit):
    box = unit
    box.systemctl("start", "trainer")
    dropin = box.path("/etc/systemd/system/trainer@x.service.d")
    dropin.mkdir(exist_ok=True)
    (dropin / "same-base.conf").write_text(f"[Service]\nEnvironment=TRAINER_BASE_DIR={BASE}\nStateDirectory=trainer\n")
    box.systemctl("daemon-reload")
    try:
        assert box.systemctl("start", "trainer@x", check=False).returncode != 0
        time.sleep(3)
        shown = box.show("trainer@x.service", "ActiveState", "NRestarts", "ExecMainStatus")
        assert shown == {"ActiveState": "failed", "NRestarts": "0", "ExecMainStatus": "73"}, shown
        messages = [e.get("MESSAGE") for e in box.journal("trainer@x.service")]
        assert any(isinstance(m, str) and str(main_pid(box)) in m for m in messages), messages
        entries = box.journal("trainer@x.service", "TRAINER_INSTANCE=x")
        assert entries  # the instance's journal field
        assert box.show("trainer.service", "ActiveState")["ActiveState"] == "active"
    finally:
        shutil.rmtree(dropin)
        box.systemctl("daemon-reload")


def test_journal_records_have_priorities_and_a_traceback_is_one_entry(unit):
    box = unit
    box.systemctl("start", "trainer")
    # An unexpected error in the loop: the control dir becomes unreadable to the daemon.
    box.run("chmod", "000", f"{BASE}/control")
    try:
        box.wait_for(lambda: any("error in the main loop" in str(e.get("MESSAGE"))
                                 for e in box.journal("trainer.service")), what="a logged error")
    finally:
        box.run("chmod", "2770", f"{BASE}/control")
    entries = box.journal("trainer.service")
    ready = [e for e in entries if "ready (pid" in str(e.get("MESSAGE", ""))]
    assert ready and ready[0]["PRIORITY"] == "6"
    error = next(e for e in entries if "error in the main loop" in str(e.get("MESSAGE")))
    assert error["PRIORITY"] == "3"
    assert "Traceback (most recent call last)" in error["MESSAGE"] and "\n" in error["MESSAGE"]
    # The daemon survived it.
    box.wait_for(lambda: state(box).get("state") == "idle", what="idle again")
    shown = trainctl(box, "logs", "-n", "200", user=None).stdout
    assert "error in the main loop" in shown and "ready" in shown


def test_only_members_of_the_trainer_group_can_steer_it(unit):
    box = unit
    box.systemctl("start", "trainer")
    denied = trainctl(box, "pause", user="mallory", check=False)
    assert denied.returncode == 77
    assert "trainer" in denied.stderr and "Traceback" not in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1
    listed = trainctl(box, "list", user="mallory", check=False)
    assert listed.returncode == 77
    trainctl(box, "pause", "--reason", "maintenance", user="alice")
    box.wait_for(lambda: state(box).get("state") == "paused", what="paused")
    trainctl(box, "resume", user="alice")
    box.wait_for(lambda: state(box).get("state") == "idle", what="resumed")


# --- [distributed] nproc = 2: the launcher as the main pid, two gloo ranks ------------------

@pytest.fixture
def two_ranks(unit):
    """trainer.service with ``[distributed] nproc = 2`` (the test config restored after), and a
    watchdog of 20 s: three processes on two busy cores can take longer than 6 s over an item's
    survey and its first step."""
    config = unit.path("/etc/trainer/config.toml")
    config.write_text(small_config(daemon={"heartbeat_seconds": 0.5}, distributed={"nproc": 2}))
    slower = unit.path("/etc/systemd/system/trainer.service.d/two-ranks.conf")
    slower.write_text("[Service]\nWatchdogSec=20s\n")
    unit.systemctl("daemon-reload")
    yield unit
    unit.systemctl("stop", "trainer.service", check=False)
    slower.unlink()
    unit.systemctl("daemon-reload")
    config.write_text(CONFIG)


def worker_pids(box) -> dict[int, int]:
    """rank -> pid (in the box) of the main pid's workers, by their process names."""
    listing = box.run("ps", "-o", "pid=,comm=", "--ppid", str(main_pid(box)), check=False).stdout
    found = {}
    for line in listing.splitlines():
        pid, _, name = line.strip().partition(" ")
        if name.strip().startswith("trainer-rank"):
            found[int(name.strip().removeprefix("trainer-rank"))] = int(pid)
    return found


def journal_text(box) -> str:
    return "\n".join(m for e in box.journal("trainer.service") if isinstance(m := e.get("MESSAGE"), str))


def test_two_ranks_reach_ready_survive_a_lost_worker_and_a_reload_and_stop_cleanly(two_ranks):
    box = two_ranks
    item_id = start_and_wait_training(box)
    launcher = main_pid(box)
    workers = worker_pids(box)
    assert sorted(workers) == [0, 1] and launcher not in workers.values()
    # trainctl knows the daemon as the main pid; the state file lists both ranks.
    status = orjson.loads(trainctl(box, "status", "--json").stdout)
    assert status["daemon"]["liveness"] == "running" and status["daemon"]["pid"] == launcher
    assert state(box)["world"]["size"] == 2

    box.systemctl("reload", "trainer")  # SIGHUP to the main pid: a reload, never a restart
    box.wait_for(lambda: "config reloaded" in journal_text(box), what="the reload")
    step = training_step(box)
    box.wait_for(lambda: training_step(box) > step, what="training after the reload")
    assert worker_pids(box) == workers and main_pid(box) == launcher

    box.run("kill", "-9", str(workers[1]))  # the group restarts inside the unit, from the checkpoint
    box.wait_for(lambda: "was interrupted" in journal_text(box), timeout=120, what="the group's restart")
    def training_again() -> bool:
        now = worker_pids(box)  # read once: the group may be between two workers
        return now.keys() == {0, 1} and now[1] != workers[1] and state(box).get("state") == "training"
    box.wait_for(training_again, timeout=120, what="training again")
    shown = box.show("trainer.service", "ActiveState", "NRestarts", "MainPID")
    assert shown == {"ActiveState": "active", "NRestarts": "0", "MainPID": str(launcher)}, shown

    box.systemctl("stop", "trainer")
    shown = box.show("trainer.service", "ActiveState", "Result", "ExecMainStatus")
    assert shown == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, shown
    assert item_state(box, item_id) == "pending" and item_meta(box, item_id)["attempts"] == 1
    assert "stopped by rank 0" in journal_text(box)  # the follower stopped on the leader's word


def test_a_stopped_worker_trips_the_watchdog_and_the_journal_has_every_rank_s_stack(two_ranks):
    box = two_ranks
    start_and_wait_training(box)
    launcher = main_pid(box)
    box.run("kill", "-STOP", str(worker_pids(box)[1]))  # rank 0 waits in its next collective: no pings
    box.wait_for(lambda: box.show("trainer.service", "NRestarts")["NRestarts"] == "1", timeout=120,
                 what="the watchdog's restart")
    wait_ready_again(box, launcher)
    text = journal_text(box)
    assert "Watchdog timeout" in text
    # The launcher relayed the SIGABRT: the stopped rank's stack, the leader's, its own.
    assert "in _follow" in text and "in _lead" in text and "in abort_all" in text
    box.wait_for(lambda: training_step(box) >= 1, timeout=120, what="training after the restart")
