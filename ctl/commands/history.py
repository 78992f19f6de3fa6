"""What happened: ``history``, the event log (the daemon's own log is ``logs.py``)."""

from __future__ import annotations

import click

from ctl import render
from ctl.session import Session, emit_json, item_id_arg, note
from trainer.spool import events
from trainer.timefmt import utc_now


@click.command()
@click.option("--since", help="An ISO time, or an age such as 30m, 2h, 7d.")
@click.option("--id", "item_id", callback=item_id_arg, help="Only this item's events.")
@click.option("-n", "last", type=click.IntRange(min=1), help="Only the last N events.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def history(session: Session, since: str | None, item_id: str | None, last: int | None, as_json: bool) -> None:
    """The event log: what happened to which item, when."""
    try:
        since_at = render.parse_when(since, utc_now()) if since else None
    except (ValueError, OverflowError):
        raise click.BadParameter(f"{since!r}: use an ISO time (2026-11-28T09:00) or an age (30m, 2h, 7d)",
                                 param_hint="--since") from None
    log = events.read(session.layout, since=since_at, item_id=item_id, last=last or None)
    shown = log.events
    if as_json:
        emit_json({"events": shown, "unreadable_lines": log.unreadable_lines})
    else:
        for event in shown:
            click.echo(render.event_line(event))
    if log.unreadable_lines:
        note(f"skipped {log.unreadable_lines} unreadable line(s) in the event log ({session.layout.events_dir})")

