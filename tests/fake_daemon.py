"""A stand-in daemon for the torch-free tests: real lock, real state file, real spool calls.

    fake_daemon.py BASE [--consume] [--no-heartbeat] [--train-seconds S]

It takes the daemon lock, publishes its state with a heartbeat, and with --consume claims
items and completes them (honouring skip requests), as the real daemon will.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.spool import control, queue  # noqa: E402
from trainer.spool.layout import open_base  # noqa: E402
from trainer.spool.lock import DaemonLock  # noqa: E402
from trainer.states import Event  # noqa: E402
from trainer.timefmt import utc_now  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--consume", action="store_true")
    parser.add_argument("--no-heartbeat", action="store_true")
    parser.add_argument("--train-seconds", type=float, default=0.0)
    args = parser.parse_args()
    layout = open_base(Path(args.base))
    lock = DaemonLock(layout)
    lock.acquire()
    started = utc_now()

    def publish(state: str, **fields) -> None:
        control.write_state(layout, control.daemon_state(state, pid=os.getpid(), started_at=started,
                                                          now=utc_now(), **fields))

    publish("idle")
    print("ready", flush=True)
    while True:
        if args.no_heartbeat:
            time.sleep(0.05)
            continue
        if not args.consume:
            publish("idle")
            time.sleep(0.05)
            continue
        item = queue.claim_next(layout, utc_now())
        if item is None:
            publish("idle")
            time.sleep(0.02)
            continue
        deadline = time.monotonic() + args.train_seconds
        step = 0
        while True:
            step += 1
            publish("training", item={"id": item.id, "name": item.meta.name, "step": step, "total": 100,
                                      "loss": 1.0, "tokens_per_s": 1000.0, "seconds_per_step": 0.01})
            action = control.decide(control.read_requests(layout), item.id)
            if action is control.Action.SKIP:
                reason = control.read_requests(layout).skip.get("reason") or "no reason given"
                queue.fail(layout, item.id, f"skipped by request at step {step}: {reason}", kind="skipped",
                           event=Event.SKIPPED)
                control.clear_skip(layout)
                break
            if time.monotonic() >= deadline:
                queue.complete(layout, item.id, steps=step)
                break
            time.sleep(0.01)


if __name__ == "__main__":
    main()
