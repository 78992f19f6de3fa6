"""Status tells the truth at the awkward moments: a daemon loading its model over a previous
run's state file, a paused daemon, a second pause."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson
from helpers.common import FAKE_DAEMON, REPO, trainctl

from trainer import clock
from trainer.spool import control
from trainer.spool.status import previous_runs_state, summarize
from trainer.timefmt import utc_now


def _status(layout) -> dict:
    result = trainctl(layout.root, "status", "--json")
    return orjson.loads(result.stdout)


def test_a_daemon_loading_its_model_is_starting_not_unresponsive(layout):
    layout.config_file.write_text("[daemon]\nstale_after_seconds = 1\n")
    # What a killed daemon leaves: a state file saying "training", from another pid.
    control.write_state(layout, control.daemon_state("training", pid=999_999, started_at=utc_now(), now=utc_now()))
    time.sleep(1.5)  # its heartbeat is now stale
    daemon = subprocess.Popen([sys.executable, str(FAKE_DAEMON), str(layout.root), "--consume", "--load-seconds", "8"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            report = _status(layout)["daemon"]
            seen.append((report["liveness"], report["state"], report["reason"]))
            if report["state"] == "idle":
                break
            time.sleep(0.2)
        assert ("running", "starting", "loading the model") in seen, seen
        assert not [s for s in seen if s[0] == "unresponsive"], seen
        assert seen[-1][:2] == ("running", "idle")
    finally:
        daemon.kill()
        daemon.wait(10)
        daemon.stdout.close()


def _summary(holder, state, lock_age_s):
    return summarize(holder=holder, state=state, state_problem=None, requests=control.Requests(), queues={},
                     active=None, disk={"free_bytes": 1, "total_bytes": 2}, now=clock.read(), stale_after_s=120,
                     base_dir="/b", lock_age_s=lock_age_s)["daemon"]


def test_a_state_file_from_the_previous_run_is_not_held_against_a_new_daemon():
    old = control.daemon_state("training", pid=41, started_at=utc_now(), now=utc_now())
    old["heartbeat_clock"] = None  # judged by its wall time: an hour ago
    old["heartbeat_at"] = "2000-01-01T00:00:00+00:00"
    assert previous_runs_state(42, old, lock_age_s=0.5, stale_after_s=120)["state"] == "starting"
    starting = _summary(42, old, lock_age_s=0.5)
    assert (starting["liveness"], starting["state"], starting["pid"]) == ("running", "starting", 42)
    assert starting["last_state"] == "training"
    # Past the heartbeat allowance without writing a state of its own: judged as it stands.
    assert _summary(42, old, lock_age_s=500)["liveness"] == "unresponsive"
    assert previous_runs_state(41, old, lock_age_s=0.5, stale_after_s=120) is None, "its own file"


def test_paused_shows_no_eta_and_no_speed(layout, chat_file, fake_daemon):
    fake_daemon(layout.root, "--consume", "--train-seconds", "60")
    trainctl(layout.root, "enqueue", str(chat_file()))
    deadline = time.monotonic() + 30
    while not (_status(layout)["item"] or {}).get("step"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _status(layout)["item"]["eta_s"] is not None
    assert trainctl(layout.root, "pause").returncode == 0
    while _status(layout)["daemon"]["state"] != "paused":
        assert time.monotonic() < deadline + 30
        time.sleep(0.1)
    report = _status(layout)
    assert report["item"]["eta_s"] is None and report["item"]["tokens_per_s"] is None
    human = trainctl(layout.root, "status").stdout
    assert "ETA" not in human and "tok/s" not in human and "paused" in human


def test_a_second_pause_says_it_is_already_paused(layout):
    first = trainctl(layout.root, "pause", "--reason", "upgrade")
    assert first.returncode == 0 and "already" not in first.stderr
    second = trainctl(layout.root, "pause", "--reason", "other")
    assert second.returncode == 0 and "already paused" in second.stderr and "upgrade" in second.stderr
    assert orjson.loads((layout.control / "pause.json").read_bytes())["reason"] == "upgrade"
