"""``trainer run`` over several processes ([distributed] nproc or nnodes > 1): the launcher.

The process systemd started stays the main PID. It holds the base dir's lock for as long as
it runs (across the group's restarts), checks the settings, then embeds torch's elastic agent
(``elastic_launch``, the machinery behind torchrun, as a library) to start ``nproc`` workers,
each running ``ranks.run_rank``: global rank 0 runs the daemon (queue, control, events,
checkpoints), the others follow it. A lost worker makes the agent restart the whole group,
which resumes from the last checkpoint, up to ``max_restarts`` times; then this process exits
and systemd's ``Restart=`` is the outer budget.

What the agent does not do for us, done here:

- Signals. Handlers that only hand the signal to a relay thread (the agent's own handlers would
  tear the group down, and the relay may have to wait for rank 0 to exist, which the main
  thread, running the agent's loop, must not). SIGTERM and SIGINT become one SIGTERM to rank 0, which
  finishes its step, checkpoints and tells the others to stop (a second one kills every worker
  at once, as a second signal does to a single daemon). SIGHUP goes to rank 0 as a config
  reload (the agent's default would kill every worker). SIGABRT, the watchdog's, goes to every
  worker with a SIGCONT, so that even a stopped one prints its stack (faulthandler), then this
  process prints its own and aborts. A worker is told nothing until it has taken its rank's
  process name (``RANK_NAME``), by which time it has blocked these signals until its own
  handlers are set.
- Exit codes. Rank 0 returns the daemon's exit code as its result (a failed worker makes the
  agent say 1 whatever it exited with); once the agent's restarts are spent, a worker's own code
  that restarting cannot fix (78: config) is passed on, so ``RestartPreventExitStatus`` works.
- Orphans. Each worker dies with this process (``PR_SET_PDEATHSIG``), however it dies.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from trainer.config import Config, DistributedConfig
from trainer.daemon.notify import Notifier
from trainer.errors import AlreadyRunning, ConfigError
from trainer.exitcodes import ExitCode
from trainer.spool.control import STARTUP_ALLOWANCE_S
from trainer.spool.layout import Layout
from trainer.spool.lock import DaemonLock

log = logging.getLogger("trainer.launch")

RELAYED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGABRT})
PASSED_ON = (ExitCode.CONFIG, ExitCode.USAGE, ExitCode.LOCKED)  # restarting cannot fix these
ABORT_WAIT_S = 10.0  # after SIGABRT, time for the workers to print their stacks (TimeoutAbortSec is 30 s)
RANK_NAME = "trainer-rank"  # a worker's process name: trainer-rank0, trainer-rank1... (ps, top, the relay)
LOOK_FOR_LEADER_S = 0.2  # a signal for rank 0 while it is (re)starting is tried again this often


def check(dist: DistributedConfig, *, lora: bool = False) -> None:
    """The settings that only make sense together (ConfigError names the key and the fix)."""
    if dist.strategy == "fsdp" and lora:
        raise ConfigError("distributed.strategy = \"fsdp\" shards a full fine-tune; with model.lora = true "
                          "use strategy = \"ddp\" (an adapter is small enough for every rank to hold)")
    if dist.node_rank >= dist.nnodes:
        raise ConfigError(f"distributed.node_rank = {dist.node_rank} but distributed.nnodes = {dist.nnodes}: "
                          f"node ranks go from 0 to nnodes - 1")
    if dist.nnodes > 1 and not dist.rendezvous:
        raise ConfigError("distributed.nnodes > 1 needs distributed.rendezvous = \"HOST:PORT\" of node 0")
    if dist.rendezvous:
        host, _, port = dist.rendezvous.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"distributed.rendezvous = {dist.rendezvous!r}: expected HOST:PORT, e.g. \"node0:29400\"")


def devices_problem(dist: DistributedConfig, cuda_devices: int) -> str | None:
    """Why the workers could not each have a GPU (pure), or None. NCCL needs one per worker."""
    nccl = dist.backend == "nccl" or (dist.backend == "auto" and cuda_devices > 0)
    if nccl and dist.nproc > cuda_devices:
        return (f"distributed.nproc = {dist.nproc} but this node has {cuda_devices} CUDA device(s): one worker "
                f"per GPU; lower nproc (or set CUDA_VISIBLE_DEVICES)")
    return None


def launch_settings(dist: DistributedConfig, endpoint: str) -> dict:
    """The agent's ``LaunchConfig``, as keywords (pure). A static rendezvous: every node is
    told its rank, so node 0's first worker is global rank 0, the one that owns the queue."""
    return {
        "min_nodes": dist.nnodes, "max_nodes": dist.nnodes, "nproc_per_node": dist.nproc,
        "run_id": "trainer", "rdzv_backend": "static", "rdzv_endpoint": endpoint,
        "rdzv_configs": {"rank": dist.node_rank, "timeout": int(dist.timeout_seconds)},
        "max_restarts": dist.max_restarts, "monitor_interval": 0.5, "start_method": "spawn",
        # Only SIGQUIT is left to the agent; the others are relayed (the module's docstring).
        "signals_to_handle": "SIGQUIT", "shutdown_timeout": dist.shutdown_seconds,
    }


def exit_code(codes: Iterable[int]) -> int:
    """The launcher's exit code once the group failed for good, from the workers' exit codes."""
    codes = list(codes)
    return next((code for code in codes if code in PASSED_ON), ExitCode.FAILED)


def free_local_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def run_launcher(layout: Layout, config: Config, config_path: Path | None, exit_when_idle: bool) -> int:
    dist = config.distributed
    check(dist, lora=config.model.lora)
    lock = DaemonLock(layout)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return ExitCode.LOCKED
    try:
        relay = SignalRelay(node_has_leader=dist.node_rank == 0)
        relay.start()
        for signum in RELAYED:
            signal.signal(signum, relay.take)
        # Nobody pings the watchdog until rank 0 runs: the workers' imports and the model's load
        # get the start-up allowance; rank 0's READY brings back the unit's timeout.
        Notifier().watchdog_timeout(STARTUP_ALLOWANCE_S)
        if os.environ.get("WATCHDOG_PID") == str(os.getpid()):
            del os.environ["WATCHDOG_PID"]  # meant for whoever feeds it: rank 0 (NotifyAccess=all)
        return _launch(layout, dist, config_path, exit_when_idle)
    finally:
        lock.release()


def _launch(layout: Layout, dist: DistributedConfig, config_path: Path | None, exit_when_idle: bool) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    import torch

    from trainer.daemon import ranks

    if problem := devices_problem(dist, torch.cuda.device_count()):
        print(f"trainer: {problem}", file=sys.stderr)
        return ExitCode.CONFIG
    endpoint = dist.rendezvous or free_local_endpoint()
    log.info("launching %d worker(s) on node %d of %d (rendezvous %s, up to %d restart(s))",
             dist.nproc, dist.node_rank, dist.nnodes, endpoint, dist.max_restarts)
    launch = LaunchConfig(**launch_settings(dist, endpoint))
    try:
        result = elastic_launch(launch, ranks.run_rank)(str(layout.root), str(config_path) if config_path else None,
                                                          exit_when_idle, os.getpid())
    except ChildFailedError as exc:
        for rank, failure in sorted(exc.failures.items()):
            log.error("worker rank %d failed for good (exit code %s): %s", rank, failure.exitcode,
                      failure.message or "see its lines above")
        return exit_code(failure.exitcode for failure in exc.failures.values())
    except Exception as exc:  # a rendezvous that never completed, a port in use...
        log.error("the worker group could not run: %s: %s", type(exc).__name__, exc)
        return ExitCode.FAILED
    return int(result) if isinstance(result, int) else ExitCode.OK  # non-leader nodes: None


class SignalRelay(threading.Thread):
    """Passes the launcher's signals on (the module's docstring), in its own thread.

    A stop is not a one-off message: once asked, every rank 0 it sees gets a SIGTERM, once. A
    stop that lands while the group restarts (the agent replacing a lost worker) would
    otherwise reach the old rank 0 as it dies, and the new group would train on."""

    def __init__(self, *, node_has_leader: bool) -> None:
        super().__init__(name="signal-relay", daemon=True)
        self.node_has_leader = node_has_leader
        self.stops = 0
        self.for_leader: list[signal.Signals] = []  # signals waiting for rank 0 to exist (reloads)
        self.stopped: set[int] = set()  # the rank-0 pids told to stop
        self._taken: queue.SimpleQueue[int] = queue.SimpleQueue()

    def take(self, signum: int, frame) -> None:
        """The signal handler: SimpleQueue.put is safe to call from one."""
        self._taken.put(signum)

    def run(self) -> None:
        while True:
            waiting = self.for_leader or self.stops
            try:
                self.handle(signal.Signals(self._taken.get(timeout=LOOK_FOR_LEADER_S if waiting else None)))
            except queue.Empty:
                pass
            if self.for_leader or self.stops:
                self.deliver(next((pid for pid, rank in workers() if rank == 0), None))

    def deliver(self, leader: int | None) -> None:
        """To the rank 0 alive now: what waited for it, and a stop if one was asked and it has
        not had it."""
        if leader is None:
            return
        for signum in self.for_leader:
            _send(leader, signum)
        self.for_leader.clear()
        if self.stops and leader not in self.stopped:
            self.stopped.add(leader)
            _send(leader, signal.SIGTERM)

    def handle(self, signum: signal.Signals) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stops += 1
            if self.stops > 1 or not self.node_has_leader:
                # A second stop: now. Or no rank 0 here to stop gracefully (node 0 sees a rank
                # gone and waits for this node to come back, docs/operations.md).
                log.warning("%s: stopping every worker now", signum.name)
                for pid, _ in workers():
                    _send(pid, signal.SIGKILL)
                os._exit(128 + signum)
            log.info("%s: rank 0 stops after its step and tells the others", signum.name)
        elif signum == signal.SIGHUP:
            if self.node_has_leader:
                self.for_leader.append(signal.SIGHUP)
        elif signum == signal.SIGABRT:
            abort_all()


def workers(launcher: int | None = None) -> list[tuple[int, int]]:
    """(pid, global rank) of a launcher's live workers (this process's by default): its
    children that have taken their rank's name (``ranks.RANK_NAME``; the agent puts RANK in
    their environment only once they run). Tests and bench/ find the workers this way too."""
    import psutil

    found = []
    try:
        children = psutil.Process(launcher).children()
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            name, status = child.name(), child.status()
        except psutil.NoSuchProcess:
            continue  # gone already
        if name.startswith(RANK_NAME) and name[len(RANK_NAME):].isdigit() and status != psutil.STATUS_ZOMBIE:
            found.append((child.pid, int(name[len(RANK_NAME):])))
    return found


def abort_all() -> None:
    """The watchdog's SIGABRT: every worker prints its stack (a stopped one is woken for it),
    then this process prints its own and aborts, as a single daemon would."""
    log.error("SIGABRT (the watchdog?): every worker prints its stack, then the launcher aborts")
    deadline = time.monotonic() + ABORT_WAIT_S
    ranked = sorted(workers(), key=lambda worker: worker[1])
    # All held first: the first one to die makes the agent SIGTERM the others, and one of them
    # must not die of it before it has printed its stack. A held worker keeps that SIGTERM
    # pending (every worker handles SIGTERM, so it is not fatal on arrival) and, woken, takes
    # the lower-numbered SIGABRT first.
    for pid, _ in ranked:
        _send(pid, signal.SIGSTOP)
    for pid, _ in ranked:  # one at a time: stacks not interleaved
        _send(pid, signal.SIGABRT)
        _send(pid, signal.SIGCONT)
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os.abort()  # glibc's abort() ends the process even past a handler that returns (Python's)


def alive(pid: int) -> bool:
    """Not exited (a zombie has: the agent reaps it)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _send(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
