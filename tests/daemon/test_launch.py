"""The launcher's pure decisions: which settings go together, what the agent is given, which
exit code a failed group leaves systemd with. (The launcher itself, with real workers:
tests/system/test_distributed.py.)"""

from __future__ import annotations

import pytest

from trainer.config import DistributedConfig
from trainer.daemon import launch
from trainer.errors import ConfigError
from trainer.exitcodes import ExitCode


@pytest.mark.parametrize("settings, words", [
    ({"nnodes": 2, "node_rank": 2, "rendezvous": "node0:29400"}, "node_rank = 2"),
    ({"nnodes": 2}, "distributed.rendezvous"),
    ({"rendezvous": "node0"}, "HOST:PORT"),
    ({"rendezvous": "node0:http"}, "HOST:PORT"),
    ({"rendezvous": ":29400"}, "HOST:PORT"),
    ({"rendezvous": "node0:70000"}, "HOST:PORT"),
])
def test_settings_that_cannot_work_together_are_refused_naming_the_key(settings, words):
    with pytest.raises(ConfigError, match=words):
        launch.check(DistributedConfig(**settings))


def test_sharding_an_adapter_is_refused_with_the_setting_that_works():
    with pytest.raises(ConfigError, match='with model.lora = true use strategy = "ddp"'):
        launch.check(DistributedConfig(nproc=2, strategy="fsdp"), lora=True)
    launch.check(DistributedConfig(nproc=2, strategy="fsdp"), lora=False)
    launch.check(DistributedConfig(nproc=2, strategy="ddp"), lora=True)


def test_good_settings_pass():
    launch.check(DistributedConfig(nproc=8))
    launch.check(DistributedConfig(nnodes=4, node_rank=3, rendezvous="10.0.0.1:29400"))
    launch.check(DistributedConfig(nnodes=2, rendezvous="[fe80::1]:29400"))


def test_the_agent_gets_a_static_rendezvous_its_restarts_and_no_signal_but_sigquit():
    settings = launch.launch_settings(
        DistributedConfig(nproc=4, nnodes=2, node_rank=1, rendezvous="node0:29400", max_restarts=5,
                          shutdown_seconds=120, timeout_seconds=900), "node0:29400")
    assert settings["nproc_per_node"] == 4 and settings["min_nodes"] == settings["max_nodes"] == 2
    # Static: each node says its rank, so node 0's first worker is global rank 0, the queue's owner.
    assert settings["rdzv_backend"] == "static" and settings["rdzv_configs"]["rank"] == 1
    assert settings["rdzv_endpoint"] == "node0:29400" and settings["max_restarts"] == 5
    assert settings["shutdown_timeout"] == 120 and settings["start_method"] == "spawn"
    # SIGTERM, SIGINT and SIGHUP are the launcher's to relay: the agent would kill every worker.
    assert settings["signals_to_handle"] == "SIGQUIT"


@pytest.mark.parametrize("codes, expected", [
    ([1], ExitCode.FAILED),
    ([-9], ExitCode.FAILED),
    ([1, ExitCode.CONFIG], ExitCode.CONFIG),  # a model that cannot load: restarting will not help
    ([ExitCode.LOCKED], ExitCode.LOCKED),
    ([ExitCode.RESTART], ExitCode.FAILED),
])
def test_a_failed_group_exits_with_the_code_systemd_must_see(codes, expected):
    assert launch.exit_code(codes) == expected


def test_a_free_local_endpoint_is_a_port_on_loopback():
    host, _, port = launch.free_local_endpoint().rpartition(":")
    assert host == "127.0.0.1" and 0 < int(port) < 65536


def test_nccl_needs_a_gpu_per_worker_and_gloo_on_the_cpu_needs_none():
    assert launch.devices_problem(DistributedConfig(nproc=2), cuda_devices=0) is None  # auto: gloo
    assert launch.devices_problem(DistributedConfig(nproc=8), cuda_devices=8) is None
    problem = launch.devices_problem(DistributedConfig(nproc=8), cuda_devices=4)
    assert "nproc = 8" in problem and "4 CUDA device(s)" in problem
    assert launch.devices_problem(DistributedConfig(nproc=2, backend="nccl"), cuda_devices=0) is not None
    assert launch.devices_problem(DistributedConfig(nproc=4, backend="gloo"), cuda_devices=1) is None


def test_a_stop_reaches_every_rank_0_the_group_has_even_one_started_after_it(monkeypatch):
    """A SIGTERM that lands while the agent replaces a lost worker must not stay with the rank 0
    that is dying: the next one is told too (once each); a reload goes to one rank 0 only."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(launch, "_send", lambda pid, signum: sent.append((pid, signum)))
    relay = launch.SignalRelay(node_has_leader=True)
    relay.deliver(100)
    assert sent == []  # nothing asked yet
    relay.handle(launch.signal.SIGHUP)
    relay.deliver(None)  # no rank 0 now (restarting): it waits
    relay.deliver(100)
    assert sent == [(100, launch.signal.SIGHUP)]
    relay.handle(launch.signal.SIGTERM)
    relay.deliver(100)
    relay.deliver(100)
    relay.deliver(200)  # the group restarted: the new rank 0 is told as well
    assert sent[1:] == [(100, launch.signal.SIGTERM), (200, launch.signal.SIGTERM)]
