"""``trainctl report``: the trainer's state as one self-contained HTML page (``trainer.report``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ctl import when
from ctl.session import Session
from trainer.report import build
from trainer.timefmt import utc_now


@click.command()
@click.option("-o", "--output", metavar="FILE",
              help="Where to write the page (default: BASE_DIR/report.html); - writes it to stdout.")
@click.option("--since", help="Only what happened since: an ISO time, or an age such as 30m, 2h, 7d "
                              "(events, failures, loss curves and versions; the queue is always whole).")
@click.pass_obj
def report(session: Session, output: str | None, since: str | None) -> None:
    """Write the trainer's state as one HTML page: no server, no network, open it anywhere.

    Prints the path written (nothing with -o -). The page is replaced atomically and is
    readable by the daemon's group.
    """
    try:
        since_at = when.parse(since, utc_now()) if since else None
    except (ValueError, OverflowError):
        raise click.BadParameter(f"{since!r}: use {when.HELP}", param_hint="--since") from None
    layout = session.layout
    html = build.render(layout, session.config, since=since_at)
    if output == "-":
        sys.stdout.write(html)
        return
    dest = Path(output) if output else build.default_path(layout)
    build.write(layout, html, dest)
    click.echo(str(dest))
