"""Steering the daemon: ``pause``, ``resume``, ``skip``, ``stop``, ``consolidate``."""

from __future__ import annotations

import click

from ctl.session import Session, daemon_running, finish, note
from trainer.exitcodes import ExitCode
from trainer.spool import control, queue


@click.command()
@click.option("--reason", help="Why; shown by trainctl status.")
@click.pass_obj
def pause(session: Session, reason: str | None) -> None:
    """Pause after the current optimizer step (checkpointed; the pause survives restarts)."""
    already = control.read_requests(session.layout).pause
    if already is not None:  # level-triggered: a second request would change nothing
        why = f": {already['reason']}" if already.get("reason") else ""
        note(f"already paused (since {already.get('at', 'an unknown time')}{why}): trainctl resume lifts it")
        return
    control.send_pause(session.layout, reason)
    if daemon_running(session.layout):
        note("pause requested: the daemon pauses after its current optimizer step")
    else:
        note("paused: the daemon is not running, and will start paused")


@click.command()
@click.pass_obj
def resume(session: Session) -> None:
    """Lift a pause."""
    if control.send_resume(session.layout):
        note("resumed")
    else:
        note("not paused: nothing to resume")


@click.command()
@click.option("--reason", help="Recorded in the item's errors.")
@click.pass_obj
def skip(session: Session, reason: str | None) -> None:
    """Stop training the current item after this step; it goes to failed (retry brings it back)."""
    layout = session.layout
    current = queue.active_item(layout)
    if not daemon_running(layout):
        note("the daemon is not running: nothing is training, no skip request was left")
        finish(ExitCode.NOT_RUNNING)
    if current is None:
        note("nothing is training: no skip request was left")
        finish(ExitCode.FAILED)
    control.send_skip(layout, current.id, reason)
    note(f"skip requested for {current.id}: it goes to failed after the current optimizer step")


@click.command()
@click.option("--reason")
@click.pass_obj
def stop(session: Session, reason: str | None) -> None:
    """Ask the daemon to checkpoint and exit (under systemd, prefer systemctl stop trainer)."""
    if not daemon_running(session.layout):
        note("the daemon is not running")
        finish(ExitCode.NOT_RUNNING)
    control.send_stop(session.layout, reason)
    note("stop requested: the daemon checkpoints and exits after its current optimizer step")


@click.command()
@click.pass_obj
def consolidate(session: Session) -> None:
    """Publish the trained model as a new version at the next idle moment (never mid-item)."""
    control.send_consolidate(session.layout)
    if daemon_running(session.layout):
        note("consolidation requested: it runs once inbox, pending and active are empty")
    else:
        note("consolidation requested: it runs when the daemon next finds the queue empty")
