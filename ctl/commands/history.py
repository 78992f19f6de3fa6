"""What happened: ``history`` (the event log) and ``logs`` (the daemon's log)."""

from __future__ import annotations

import click

from ctl import render
from ctl.session import Session, emit_json, finish, item_id_arg, note
from trainer.exitcodes import ExitCode
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


@click.command()
@click.option("-f", "--follow", is_flag=True)
@click.option("-n", "lines", type=click.IntRange(min=0), default=50, show_default=True)
@click.option("--unit", default="trainer", show_default=True, help="The systemd unit (trainer@0 for a GPU instance).")
def logs(follow: bool, lines: int, unit: str) -> None:
    """The daemon's log from the journal (wraps journalctl -u UNIT)."""
    import shutil  # here, not at the top: it costs every trainctl command ~5 ms of start-up
    import subprocess  # only here: it costs every other command ~6 ms of start-up

    journalctl = shutil.which("journalctl")
    if journalctl is None:
        note("no journal here (journalctl not found): run the daemon in a terminal to see its log")
        finish(ExitCode.FAILED)
    argv = [journalctl, "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-iso"]
    if follow:
        argv.append("-f")
    try:
        code = subprocess.call(argv)
    except KeyboardInterrupt:
        code = 0
    if code != 0:
        note(f"journalctl failed (exit {code}): is there a journal, and may you read it "
             f"(join the systemd-journal or adm group)?")
        finish(ExitCode.FAILED)
