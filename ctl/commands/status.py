"""``trainctl status``: the command people type most; it imports only what it needs (the live
view's library loads for ``--watch`` on a terminal only)."""

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
@click.option("--watch", is_flag=True, help="Refresh every second, in place, until Ctrl-C.")
@click.pass_obj
def status(session: Session, as_json: bool, watch: bool) -> None:
    """Whether the daemon is really alive, what it does, the queues and the disk.

    Exits 3 when no daemon is running (like systemctl status).
    """
    from ctl import style

    def report() -> dict:
        return collect(session.plain_layout, lambda: session.config, clock.read())

    colour = not as_json and style.wanted()
    if watch and colour:
        last = _watch_live(report)
    else:
        while True:
            last = report()
            if as_json:
                emit_json(last)
            else:
                click.echo("\n".join(render.status_lines(last, colour)))
            if not watch:
                break
            try:
                time.sleep(1.0)
            except KeyboardInterrupt:
                break
    if last["daemon"]["liveness"] == Liveness.NOT_RUNNING.value:
        finish(ExitCode.NOT_RUNNING)


def _watch_live(report) -> dict:
    """Redraw in place on a terminal (rich's Live: ~40 ms of imports, paid here only)."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    def view(data: dict) -> Text:
        return Text.from_ansi("\n".join(render.status_lines(data, True)))

    last = report()
    with Live(view(last), console=Console(), auto_refresh=False, transient=False) as live:
        try:
            while True:
                time.sleep(1.0)
                last = report()
                live.update(view(last), refresh=True)
        except KeyboardInterrupt:
            pass
    return last
