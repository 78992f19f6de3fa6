"""A daemon process for the torch-free tests.

    fake_daemon.py BASE [--consume] [--no-heartbeat] [--train-seconds S] [--load-seconds S]

--consume: the real daemon (trainer.daemon.service.Daemon) on a fake engine (fake_engine.py):
  the real lock, recovery, control protocol, queue and state file; each item "trains" for
  --train-seconds over 100 steps; --load-seconds: its "model" takes that long to load.
Without it: a process that holds the real lock and heartbeats through the daemon's own
  reporter, but acts on nothing (a daemon busy elsewhere, as trainctl sees it).
--no-heartbeat: holds the lock and writes its state once, then never again (a hung daemon).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from helpers.fake_engine import FakeEngine  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.daemon.notify import Notifier  # noqa: E402
from trainer.daemon.reporter import Activity, Reporter  # noqa: E402
from trainer.daemon.service import Daemon  # noqa: E402
from trainer.spool.layout import open_base  # noqa: E402
from trainer.spool.lock import DaemonLock  # noqa: E402
from trainer.states import DaemonState  # noqa: E402

STEPS = 100


def consume(layout, train_seconds: float, load_seconds: float = 0.0) -> None:
    def engine(root, config):
        time.sleep(load_seconds)  # a model loading: no heartbeat is possible meanwhile
        return FakeEngine(root, config, steps_per_item=STEPS, checkpoint_every=10, step_seconds=train_seconds / STEPS)

    daemon = Daemon(layout, load_config(layout.config_file), engine_factory=engine)
    daemon.signals.install()
    daemon.start = _announcing(daemon.start)
    sys.exit(daemon.run())


def _announcing(start):
    def started():
        start()
        print("ready", flush=True)
    return started


def hold_the_lock(layout, heartbeat: bool) -> None:
    DaemonLock(layout).acquire()
    reporter = Reporter(layout, Notifier({}), memory_growth_limit=0)
    reporter.publish(DaemonState.IDLE, Activity(), None)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
        if heartbeat:
            reporter.publish(DaemonState.IDLE, Activity(), None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--consume", action="store_true")
    parser.add_argument("--no-heartbeat", action="store_true")
    parser.add_argument("--train-seconds", type=float, default=0.0)
    parser.add_argument("--load-seconds", type=float, default=0.0)
    args = parser.parse_args()
    layout = open_base(Path(args.base))
    if args.consume:
        consume(layout, args.train_seconds, args.load_seconds)
    else:
        hold_the_lock(layout, heartbeat=not args.no_heartbeat)


if __name__ == "__main__":
    main()
