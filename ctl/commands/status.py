"""``trainctl status``: the command people type most; it imports only what it needs."""

from __future__ import annotations

import time

import click

from ctl import render
from ctl.session import Session, emit_json, finish
from trainer import clock
from trainer.exitcodes import ExitCode
from trainer.spool.status import collect
from trainer.states import Liveness


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.pass_obj
def status(session: Session, as_json: bool, watch: bool) -> None:
    """Whether the daemon is really alive, what it does, the queues and the disk.

    Exits 3 when no daemon is running (like systemctl status).
    """
    while True:
        report = collect(session.layout, session.config, clock.read())
        if as_json:
            emit_json(report)
        else:
            if watch:
                click.clear()
            click.echo("\n".join(render.status_lines(report)))
        if not watch:
            break
        try:
            time.sleep(1.0)
        except KeyboardInterrupt:
            break
    if report["daemon"]["liveness"] == Liveness.NOT_RUNNING.value:
        finish(ExitCode.NOT_RUNNING)
