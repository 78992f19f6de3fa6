"""What the daemon does once, under its lock, before it loads the model: upgrade an older base
dir, and undo what a crash left (the active item back to its queue, stale requests, tmp/)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from trainer.config import Config
from trainer.daemon import items
from trainer.daemon.notify import Notifier
from trainer.spool import control, queue
from trainer.spool.item import display_name
from trainer.spool.layout import Layout
from trainer.spool.sweep import sweep_tmp
from trainer.states import DaemonState, ItemState

log = logging.getLogger("trainer.daemon")


def recover(layout: Layout, config: Config) -> None:
    """Undo what a crash left, before anything else runs."""
    reason = "interrupted: the daemon stopped without finishing it (crash, kill or power loss)"
    max_attempts = config.spool.max_attempts
    for item in queue.list_items(layout, [ItemState.ACTIVE]):
        decision = items.after_failure(item.meta.attempts if item.meta else 0, transient=True,
                                       max_attempts=max_attempts, retry_base_s=0, interrupted=True)
        if decision.give_up:
            queue.fail(layout, item.id, f"{reason}; gave up after {decision.attempts} interrupted attempts "
                                             f"(it may crash the daemon): trainctl retry {item.id} to try again",
                       kind="transient")
            log.error("%s failed %d times; moved to failed/", item.id, decision.attempts)
        else:
            queue.requeue(layout, item.id, reason=reason)
            log.warning("%s was interrupted; back to the head of its queue (attempt %d of %d)",
                        item.id, decision.attempts + 1, max_attempts)
    if control.clear_skip(layout):
        log.info("cleared a skip request left from before the restart")
    if control.clear_stop(layout):
        log.info("cleared a stop request left from before the restart")
    for name in sweep_tmp(layout).restored:
        log.warning("gave inbox file %s back after an interrupted intake", display_name(name))


def upgrade_base_dir(layout: Layout, publish: Callable[..., None], notifier: Notifier) -> None:
    """A format-1 base dir becomes format 2 (its event log split by month), here because
    systemd restarts the daemon after every package upgrade and its lock makes it the only
    upgrader. A failure (a full disk) is logged and the daemon goes on: every reader
    works on a base dir in any state of the upgrade, and the next start tries again."""
    from trainer.spool import upgrade

    if not upgrade.needed(layout):
        return
    publish(DaemonState.STARTING, reason="upgrading the event log to monthly segments")
    notifier.extend_timeout(max(30.0, upgrade.old_log_bytes(layout) / 10e6))  # >= 10 MB/s
    try:
        report = upgrade.upgrade(layout)
    except OSError as exc:
        log.warning("event log: the upgrade to monthly segments failed (%s); history still shows every "
                    "event; tried again at the next start", exc)
        return
    if report.converted_bytes is not None:
        log.info("event log: %s (%d bytes) split into events/v1/ by month (%s)", layout.old_events.name,
                 report.converted_bytes, ", ".join(report.months) or "empty")
    if report.left_over_bytes:
        log.warning("event log: %s keeps %d bytes an older trainer appended after the upgrade; they are "
                    "read where they are", layout.old_events.name, report.left_over_bytes)
    if report.format_bumped:
        log.info("base dir upgraded to format version 2")
