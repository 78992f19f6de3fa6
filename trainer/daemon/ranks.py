"""One worker of the distributed launcher (``launch.py``): rank 0 runs the daemon, the others follow.

Started by torch's elastic agent in a fresh interpreter (``spawn``). Until its role's handlers
are set, it keeps the signals the launcher relays for them (``EARLY``: a Python handler that
notes them, replayed once the role's handlers are in place), and takes its rank's process
name (by which the launcher finds it). Not a signal mask: importing torch has started native
threads before this code runs, and a process-directed signal goes to any thread that does
not block it, where the default action (SIGTERM: death) applies to the whole process (seen: a
stop relayed to a new rank 0 during a restart killed it, four attempts in a row). It makes sure it cannot outlive the launcher and leaves the terminal's
process group (Ctrl-C reaches the launcher only, which relays it); then it joins the process
group and takes its role:

- global rank 0 runs the ``Daemon`` exactly as a single process would, on an ``Engine`` that
  knows the world (``trainer/train/world.py``), behind the launcher's lock; it returns the
  daemon's exit code as its result, after telling the followers to stop;
- the others run ``follower.follow``: no data, no disk, no decisions. They ignore SIGINT and
  SIGHUP (the launcher's to relay) and exit at once on SIGTERM (they hold nothing to save: only
  the agent sends them one, when it tears the group down).
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path

from trainer.config import load_config
from trainer.daemon import logs
from trainer.daemon.launch import RANK_NAME
from trainer.daemon.notify import Notifier
from trainer.errors import ConfigError, TrainerError, WorldLost
from trainer.exitcodes import ExitCode
from trainer.spool.control import STARTUP_ALLOWANCE_S
from trainer.spool.layout import open_base

log = logging.getLogger("trainer.rank")

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

EARLY = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGABRT is faulthandler's from the start
_early: list[int] = []  # the signals taken before the role's handlers were set, in order


def _keep(signum: int, frame) -> None:
    _early.append(signum)


def _replay_early() -> None:
    """The signals kept before the role's handlers were set, to those handlers now."""
    while _early:
        signal.raise_signal(_early.pop(0))


def run_rank(root: str, config_path: str | None, exit_when_idle: bool, launcher_pid: int) -> int:
    """The worker's entry point (picklable, for the agent's ``spawn``): the daemon's exit code on
    rank 0, 0 on the others."""
    for signum in EARLY:  # until this rank's role sets its own (the module's docstring)
        signal.signal(signum, _keep)
    _die_with(launcher_pid)
    os.setpgid(0, 0)
    faulthandler.enable(all_threads=True)  # SIGABRT, SIGSEGV...: every thread's stack on stderr
    from trainer.train.world import World

    world = World.from_environment()
    _name_process(f"{RANK_NAME}{world.rank}")
    logs.setup()
    logs.tag_rank(world.rank)
    try:
        layout = open_base(Path(root))
        config = load_config(Path(config_path) if config_path else layout.config_file)
    except TrainerError as exc:
        log.error("%s", exc)
        sys.exit(ExitCode.CONFIG)
    logs.add_log_file(layout)
    notifier = Notifier()  # before a follower drops NOTIFY_SOCKET: needed once the group is lost
    world.join(config.distributed.backend, config.distributed.timeout_seconds)
    try:
        if world.is_leader:
            return _lead(layout, config, config_path, world, exit_when_idle, launcher_pid)
        _follow(layout, config, world)
        return ExitCode.OK
    except WorldLost:
        # The agent restarts the group now; until the new rank 0 is ready (its READY restores
        # the unit's watchdog timeout) nobody pings: give the model's load time to happen.
        notifier.watchdog_timeout(STARTUP_ALLOWANCE_S)
        raise
    finally:
        world.leave()


def _lead(layout, config, config_path, world, exit_when_idle: bool, launcher_pid: int) -> int:
    from trainer.daemon.service import Daemon
    from trainer.daemon.sinks import sinks_for
    from trainer.spool.lock import LauncherLock
    from trainer.train.engine import Engine

    daemon = Daemon(layout, config, config_path=Path(config_path) if config_path else None,
                    engine_factory=lambda root, cfg: Engine(root, cfg, world), metrics=sinks_for(layout, config))
    daemon.reporter.pid = launcher_pid  # the daemon, as trainctl knows it, is the lock's holder
    daemon.signals.install()
    _replay_early()
    log.info("rank 0 of %d: the daemon (queue, control, checkpoints)", world.size)
    try:
        code = daemon.run(exit_when_idle=exit_when_idle, lock=LauncherLock(layout, launcher_pid))
    except ConfigError as exc:
        log.error("%s", exc)
        code = ExitCode.CONFIG
    world.post([("stop",)] * world.size)  # only on a clean return: a lost group has no one to tell
    return int(code)


def _follow(layout, config, world) -> None:
    from trainer.train.engine import Engine
    from trainer.train.follower import follow

    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)  # systemd hears from rank 0 only
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Exit at once, but through a handler: a SIGTERM with the default action kills even a
    # stopped process on arrival, before the launcher can make it print its stack (abort_all).
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(128 + signum))
    _replay_early()
    log.info("rank %d of %d: following rank 0", world.rank, world.size)
    try:
        steps = follow(Engine(layout.root, config, world))
    except ConfigError as exc:  # its model cannot be loaded here: restarting will not help
        log.error("%s", exc)
        sys.exit(ExitCode.CONFIG)
    log.info("rank %d: stopped by rank 0 after %d step(s)", world.rank, steps)


def _die_with(launcher_pid: int) -> None:
    """SIGKILL when the launcher dies (checked once more after asking: it may be gone already)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker may outlive its launcher",
                    ctypes.get_errno())
    if os.getppid() != launcher_pid:
        os._exit(ExitCode.FAILED)


def _name_process(name: str) -> None:
    """The process's name (``ps -o comm``, ``top``): which rank is which, for people and for
    the launcher's relay (``launch.workers``)."""
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
