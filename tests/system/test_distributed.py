"""`trainer run --nproc 2`: the real launcher, torch's elastic agent and two gloo ranks on the
tiny demo model, driven as an operator would (signals, kill -9, trainctl requests).

Each test starts real process trees; the workers are found by their process names
(``trainer-rank0``, ``trainer-rank1``), and every test ends with none of them left.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import orjson
import pytest
import torch
from helpers.common import REPO, trainctl
from helpers.daemon_proc import DaemonProcess, enqueue_sample, metric_steps, small_config
from safetensors.torch import load_file

from trainer.config import default_config_toml
from trainer.daemon import launch
from trainer.daemon.launch import alive
from trainer.spool import control, queue
from trainer.spool.layout import init_base, open_base
from trainer.spool.lock import DaemonLock, lock_holder
from trainer.states import ItemState
from trainer.train.checkpoint import CheckpointStore
from trainer.train.engine import WEIGHTS_FILE

# Deterministic kernels: the 2-rank run must end where one process ends. A short group
# timeout, so that a pause outlasting it proves the keep-alive.
CONFIG = small_config(train={"deterministic": True}, distributed={"timeout_seconds": 10.0, "max_restarts": 3})


@pytest.fixture
def base(tmp_path, demo_model):
    return _base(tmp_path / "base", demo_model, CONFIG)


def _base(root, demo_model, config: str):
    layout, _ = init_base(root, default_config_toml())
    layout.config_file.write_text(config)
    shutil.copytree(demo_model, layout.root / "models" / "base")
    return layout


@pytest.fixture
def daemons():
    started: list[DaemonProcess] = []

    def start(layout, *args):
        daemon = DaemonProcess(layout, *args)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
    for daemon in started:  # the workers die with their launcher (PR_SET_PDEATHSIG)
        wait_gone(getattr(daemon, "worker_pids_seen", ()), what="workers of a killed launcher")


def ranks(daemon: DaemonProcess) -> dict[int, int]:
    """rank -> pid of the launcher's workers that have taken their rank's name."""
    found = {rank: pid for pid, rank in launch.workers(daemon.pid)}
    daemon.worker_pids_seen = getattr(daemon, "worker_pids_seen", set()) | set(found.values())
    return found


def wait_ranks(daemon: DaemonProcess, count: int = 2, timeout: float = 120) -> dict[int, int]:
    daemon.wait_for(lambda: len(ranks(daemon)) == count, timeout=timeout, what=f"{count} workers")
    return ranks(daemon)


def wait_gone(pids, timeout: float = 30, what: str = "processes") -> None:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"{what} still alive: {[p for p in pids if alive(p)]}"
        time.sleep(0.1)


def final_weights(layout) -> dict[str, torch.Tensor]:
    checkpoint = CheckpointStore(layout.root / "checkpoints").latest_valid()
    return load_file(str(checkpoint.path / WEIGHTS_FILE))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def log_of(daemon: DaemonProcess) -> str:
    """All the daemon's output (``output()`` keeps the tail)."""
    return (daemon.layout.root.parent / "daemon.log").read_text(errors="replace")


def followers_stop_steps(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"\[rank 1\] rank 1: stopped by rank 0 after (\d+) step", output)]


# --- tests ------------------------------------------------------------------------------------


def test_two_ranks_train_the_queue_to_the_weights_one_process_reaches(base, tmp_path, demo_model, daemons):
    alone = _base(tmp_path / "alone" / "base", demo_model, CONFIG)
    for layout in (base, alone):
        for seed in (1, 2):
            enqueue_sample(layout, layout.root.parent, records=40, seed=seed, name=f"{layout.root.name}{seed}")
    two = daemons(base, "--nproc", "2", "--exit-when-idle")
    wait_ranks(two)
    assert two.finish(300) == 0, two.output()
    one = daemons(alone, "--exit-when-idle")
    assert one.finish(300) == 0, one.output()

    assert len(queue.list_items(base, [ItemState.DONE])) == 2
    # The same update as one process over the same global batch: fp32 sums in another order.
    assert max_difference(final_weights(base), final_weights(alone)) <= 1e-5
    state = two.state()
    assert state["pid"] == two.pid, "trainctl knows the daemon by the lock's holder: the launcher"
    world = state["world"]
    assert world["size"] == 2 and world["nodes"] == 1
    assert [r["rank"] for r in world["ranks"]] == [0, 1] and all(r["rss"] > 0 for r in world["ranks"])
    output = log_of(two)
    assert "[rank 1] rank 1 of 2: following rank 0" in output and "[rank 0]" in output
    # Both ranks stopped at the end of the queue, the follower after every step the leader took.
    assert followers_stop_steps(output) == [state["last_checkpoint"]["step"]]
    assert not os.path.exists(base.root / "logs") or "[rank 1]" in (base.root / "logs" / "trainer.log").read_text()


def test_sigterm_stops_every_rank_on_the_same_step_and_one_process_resumes(base, daemons):
    item = enqueue_sample(base, base.root.parent, records=300)
    daemon = daemons(base, "--nproc", "2")
    workers = wait_ranks(daemon)
    daemon.wait_for(lambda: daemon.step() >= 3, timeout=180, what="step 3")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish(120) == 0, daemon.output()
    wait_gone(workers.values(), what="workers after a stop")
    stopped_at = daemon.state()["last_checkpoint"]["step"]
    assert followers_stop_steps(log_of(daemon)) == [stopped_at]
    meta = queue.find(base, item).meta
    assert queue.find(base, item).state is ItemState.PENDING and meta.attempts == 0  # a stop is no failure

    # The 2-rank checkpoint goes on in one process: every step trained exactly once.
    one = daemons(base, "--exit-when-idle")
    assert one.finish(300) == 0, one.output()
    steps = metric_steps(base, item)
    assert queue.find(base, item).state is ItemState.DONE
    assert sorted(steps) == list(range(1, max(steps) + 1)), steps


def test_a_killed_worker_restarts_the_group_from_the_checkpoint(base, daemons):
    item = enqueue_sample(base, base.root.parent, records=200)
    daemon = daemons(base, "--nproc", "2", "--exit-when-idle")
    workers = wait_ranks(daemon)
    daemon.wait_for(lambda: daemon.step() >= 4, timeout=180, what="step 4")
    os.kill(workers[1], signal.SIGKILL)
    assert daemon.finish(300) == 0, daemon.output()
    output = log_of(daemon)
    assert "was interrupted; back to the head of its queue (attempt 2 of 3)" in output
    assert queue.find(base, item).state is ItemState.DONE and queue.find(base, item).meta.attempts == 1
    steps = metric_steps(base, item)
    assert set(steps) == set(range(1, max(steps) + 1)) and steps.count(1) == 1, steps  # resumed, not redone
    assert not any(alive(pid) for pid in workers.values())


def test_a_stop_during_the_group_s_restart_still_stops_it(base, daemons):
    enqueue_sample(base, base.root.parent, records=300)
    daemon = daemons(base, "--nproc", "2")
    workers = wait_ranks(daemon)
    daemon.wait_for(lambda: daemon.step() >= 2, timeout=180, what="step 2")
    os.kill(workers[1], signal.SIGKILL)
    daemon.proc.send_signal(signal.SIGTERM)  # lands on a rank 0 about to go: the next one is told too
    assert daemon.finish(180) == 0, daemon.output()
    wait_gone(daemon.worker_pids_seen, what="workers after a stop during a restart")


def test_sighup_reloads_in_the_same_processes_and_kill_9_of_the_launcher_leaves_no_worker(base, daemons):
    enqueue_sample(base, base.root.parent, records=300)
    daemon = daemons(base, "--nproc", "2")
    workers = wait_ranks(daemon)
    daemon.wait_for(lambda: daemon.step() >= 2, timeout=180, what="step 2")
    base.config_file.write_text(CONFIG.replace("heartbeat_seconds = 0.2", "heartbeat_seconds = 0.3"))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: "config reloaded" in log_of(daemon), timeout=60, what="the reload")
    step = daemon.step()
    daemon.wait_for(lambda: daemon.step() > step, timeout=60, what="training after the reload")
    assert ranks(daemon) == workers, "a reload must never restart the workers"

    daemon.proc.kill()
    daemon.proc.wait(10)
    wait_gone(workers.values(), what="workers of a launcher killed with -9")
    assert lock_holder(base) is None


def test_sigabrt_prints_every_rank_s_stack_even_a_stopped_one(base, daemons):
    enqueue_sample(base, base.root.parent, records=300)
    daemon = daemons(base, "--nproc", "2")
    workers = wait_ranks(daemon)
    daemon.wait_for(lambda: daemon.step() >= 2, timeout=180, what="step 2")
    os.kill(workers[1], signal.SIGSTOP)  # hung: rank 0 waits in the next collective
    daemon.proc.send_signal(signal.SIGABRT)  # what systemd's watchdog sends the main pid
    assert daemon.finish(60) == -signal.SIGABRT
    output = log_of(daemon)
    assert "in _follow" in output and "in _lead" in output, output[-3000:]  # rank 1's stack, rank 0's
    assert "in abort_all" in output  # and the launcher's own
    wait_gone(workers.values(), what="workers after an abort")


def test_pause_outlasts_the_group_timeout_and_stop_reaches_every_rank(base, daemons):
    first = enqueue_sample(base, base.root.parent, records=300, seed=1, name="first")
    second = enqueue_sample(base, base.root.parent, records=300, seed=2, name="second")
    daemon = daemons(base, "--nproc", "2")
    workers = wait_ranks(daemon)
    daemon.wait_for(lambda: daemon.step() >= 2, timeout=180, what="step 2")
    control.send_pause(base, reason="test")
    daemon.wait_for(lambda: daemon.state().get("state") == "paused", timeout=60, what="paused")
    paused_at = daemon.step()
    shown = trainctl(base.root, "status").stdout
    assert "world       2 ranks on 1 node" in shown and f"pid {workers[1]}:" in shown, shown
    time.sleep(15)  # longer than the group's timeout (10 s): only the leader's keep-alive saves it
    assert daemon.step() == paused_at
    control.send_resume(base)
    daemon.wait_for(lambda: daemon.step() > paused_at, timeout=60, what="training after the pause")
    assert ranks(daemon) == workers and "interrupted" not in log_of(daemon)
    control.send_skip(base, first, reason="test")
    daemon.wait_for(lambda: queue.find(base, first).state is ItemState.FAILED, timeout=60, what="the skip")
    # The next item trains on both ranks: the follower never knew about the skip.
    daemon.wait_for(lambda: (daemon.state().get("item") or {}).get("id") == second and daemon.step() >= 1,
                    timeout=60, what="the next item")
    control.send_stop(base, reason="test")
    assert daemon.finish(120) == 0, daemon.output()
    assert followers_stop_steps(log_of(daemon)) == [daemon.state()["last_checkpoint"]["step"]]


def test_a_locked_base_dir_exits_73_and_a_bad_group_78_before_any_worker(base, tmp_path):
    lock = DaemonLock(base)
    lock.acquire()
    try:
        locked = _trainer(base, "--nproc", "2")
    finally:
        lock.release()
    assert locked.returncode == 73 and "already runs" in locked.stderr
    base.config_file.write_text(small_config(distributed={"nnodes": 2}))
    bad = _trainer(base)
    assert bad.returncode == 78 and "distributed.rendezvous" in bad.stderr and "Traceback" not in bad.stderr
    base.config_file.write_text(small_config(model={"lora": True}, distributed={"strategy": "fsdp"}))
    sharded_adapter = _trainer(base, "--nproc", "2")
    assert sharded_adapter.returncode == 78 and 'use strategy = "ddp"' in sharded_adapter.stderr
    assert "Traceback" not in sharded_adapter.stderr


def test_two_nodes_on_one_machine_train_one_model(tmp_path, demo_model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    group = {"nnodes": 2, "nproc": 1, "rendezvous": f"127.0.0.1:{port}", "timeout_seconds": 60.0}
    node0 = _base(tmp_path / "node0" / "base", demo_model, small_config(distributed={**group, "node_rank": 0}))
    node1 = _base(tmp_path / "node1" / "base", demo_model, small_config(distributed={**group, "node_rank": 1}))
    item = enqueue_sample(node0, tmp_path, records=40)
    first = DaemonProcess(node0, "--exit-when-idle")
    second = DaemonProcess(node1)
    try:
        assert first.finish(300) == 0, first.output()
        assert second.finish(120) == 0, second.output()  # told to stop by rank 0
    finally:
        first.kill()
        second.kill()
    assert queue.find(node0, item).state is ItemState.DONE
    assert "[rank 1] rank 1 of 2: following rank 0" in log_of(second)
    assert not list(open_base(node1.root).root.glob("metrics/*.jsonl")), "node 1 writes nothing of the queue's"


def _trainer(layout, *args):
    return subprocess.run([sys.executable, "-m", "trainer.daemon", "run", "--base-dir", str(layout.root), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


# --- sharded (distributed.strategy = "fsdp") ----------------------------------------------------

SHARDED = small_config(train={"deterministic": True}, daemon={"consolidate_when_idle": True},
                       distributed={"timeout_seconds": 30.0, "max_restarts": 3, "strategy": "fsdp"},
                       eval={"holdout_fraction": 0.05, "max_new_tokens": 8})


def whole_weights(checkpoint_path, demo_model) -> dict[str, torch.Tensor]:
    """A sharded checkpoint's weights, read whole in this process (as one process resumes it)."""
    from transformers import AutoModelForCausalLM

    from trainer.train import sharding

    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    sharding.load(model, torch.optim.AdamW(model.parameters()), checkpoint_path, alone=True)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_sharded_ranks_publish_plain_versions_and_fall_back_together_from_a_corrupt_shard(tmp_path, demo_model,
                                                                                          daemons):
    """FSDP2 under the real launcher: sharded checkpoints (each rank's file hashed in the
    manifest), a version that is a plain HF model holding exactly the checkpoint's weights, with
    its evaluation and samples (the followers mirror the leader's forward passes); then a corrupt
    shard, a new item and a killed rank: the ranks fall back to the same checkpoint and end
    where one process ends from the same base dir."""
    from trainer.demo.sample_data import write_eval_files

    layout = _base(tmp_path / "base", demo_model, SHARDED)
    write_eval_files(layout.eval_dir, general_records=40)
    enqueue_sample(layout, tmp_path, records=60, seed=1, name="first")
    first = daemons(layout, "--nproc", "2", "--exit-when-idle")
    wait_ranks(first)
    assert first.finish(300) == 0, first.output()

    assert first.state()["world"]["strategy"] == "fsdp"
    newest = CheckpointStore(layout.root / "checkpoints").latest_valid()
    files = set(newest.manifest["files"])
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= files and WEIGHTS_FILE not in files, files
    version = layout.root / "models" / "v001"
    meta = orjson.loads((version / "trainer_version.json").read_bytes())
    assert "general" in meta["eval"]["sets"] and meta["eval"]["samples"], meta["eval"]
    published = load_file(str(version / "model.safetensors"))
    assert max_difference(published, whole_weights(newest.path, demo_model)) == 0.0

    # Rank 1's shard of the newest checkpoint rots on disk.
    shard = newest.path / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    item = enqueue_sample(layout, tmp_path, records=200, seed=2, name="second")
    alone = open_base(shutil.copytree(layout.root, tmp_path / "alone" / "base", symlinks=True))

    second = daemons(layout, "--nproc", "2", "--exit-when-idle")
    workers = wait_ranks(second)
    second.wait_for(lambda: second.step() >= newest.step + 4, timeout=180, what="4 steps into the second item")
    os.kill(workers[1], signal.SIGKILL)
    assert second.finish(300) == 0, second.output()
    one = daemons(alone, "--exit-when-idle")
    assert one.finish(300) == 0, one.output()

    for run in (layout, alone):
        assert (run.root / "checkpoints" / "quarantine" / newest.path.name).is_dir()
        assert queue.find(run, item).state is ItemState.DONE
    assert "was interrupted; back to the head of its queue" in log_of(second)
    assert max_difference(whole_weights(CheckpointStore(layout.root / "checkpoints").latest_valid().path, demo_model),
                          final_weights(alone)) <= 1e-5


def test_sigterm_stops_sharded_ranks_on_the_same_step_with_a_sharded_checkpoint(tmp_path, demo_model, daemons):
    layout = _base(tmp_path / "base", demo_model, SHARDED)
    enqueue_sample(layout, tmp_path, records=300)
    daemon = daemons(layout, "--nproc", "2")
    workers = wait_ranks(daemon)
    daemon.wait_for(lambda: daemon.step() >= 3, timeout=180, what="step 3")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish(120) == 0, daemon.output()
    last = CheckpointStore(layout.root / "checkpoints").latest_valid()
    assert "__1_0.distcp" in last.manifest["files"] and last.step == daemon.state()["last_checkpoint"]["step"]
    assert followers_stop_steps(log_of(daemon)) == [last.step]  # the follower took every step the leader took
    wait_gone(workers.values(), what="sharded workers after a stop")
