"""What happened: ``history``, the event log (the daemon's own log is ``logs.py``)."""

from __future__ import annotations

import click

from ctl import render, when
from ctl.session import Session, complete_item_id, emit_json, item_id_arg, note
from trainer.spool import events
from trainer.timefmt import parse_iso, utc_now


def _moment(text: str | None, option: str):
    if text is None:
        return None
    try:
        return when.parse(text, utc_now())
    except (ValueError, OverflowError):
        raise click.BadParameter(f"{text!r}: use {when.HELP}", param_hint=option) from None


def _before(event: dict, until) -> bool:
    try:
        return parse_iso(event["t"]) < until
    except (KeyError, TypeError, ValueError):
        return False


@click.command()
@click.option("--since", help=f"From this time: {when.HELP}.")
@click.option("--until", help="Up to (not including) this time, in the same forms as --since.")
@click.option("--id", "item_id", callback=item_id_arg, shell_complete=complete_item_id,
              help="Only this item's events (a short id works).")
@click.option("-n", "last", type=click.IntRange(min=1), help="Only the last N events.")
@click.option("-v", "--verbose", is_flag=True, help="Full ids, exact times and every detail (hashes included).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def history(session: Session, since: str | None, until: str | None, item_id: str | None, last: int | None,
            verbose: bool, as_json: bool) -> None:
    """The event log: what happened to which item, when."""
    since_at, until_at = _moment(since, "--since"), _moment(until, "--until")
    # With --until, the last N are the last N before it: read them all, then cut.
    log = events.read(session.layout, since=since_at, item_id=item_id,
                      last=None if until_at is not None else last)
    shown = log.events
    if until_at is not None:
        shown = [e for e in shown if _before(e, until_at)]
        shown = shown[-last:] if last else shown
    if as_json:
        emit_json({"events": shown, "unreadable_lines": log.unreadable_lines})
    elif verbose:
        for event in shown:
            click.echo(render.event_line(event))
    elif shown:
        from trainer.spool.names import all_ids, short_forms

        shorts = short_forms({*all_ids(session.layout), *(e["id"] for e in shown if isinstance(e.get("id"), str))})
        for event in shown:
            click.echo(render.event_brief(event, shorts))
    if log.unreadable_lines:
        note(f"skipped {log.unreadable_lines} unreadable line(s) in the event log ({session.layout.events_dir})")

