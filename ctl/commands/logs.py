"""``logs``: the daemon's log, from the journal or from the base dir's log file.

Where to look is what the daemon said in ``run/log.json``: under systemd the journal (its
unit), otherwise ``logs/trainer.log``. ``--unit`` forces the journal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import click

from ctl import when
from ctl.session import Session, complete_item_id, finish, item_id_arg, note
from trainer.exitcodes import ExitCode
from trainer.spool import logfile
from trainer.spool.layout import Layout
from trainer.timefmt import utc_now

DEFAULT_UNIT = "trainer.service"


@dataclass(frozen=True)
class Source:
    """Where the log is: a unit's journal, or the base dir's file (``unit`` None)."""

    unit: str | None


def source(target: dict | None, file_exists: bool, unit_option: str | None) -> Source | None:
    """Pure: the journal of ``--unit``, else where the daemon said it logs, else the file if
    there is one; None when there is nothing to read."""
    if unit_option:
        return Source(unit_option)
    if target is not None and target.get("journal"):
        return Source(target.get("unit") or DEFAULT_UNIT)
    if target is not None or file_exists:
        return Source(None)
    return None


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they come (Ctrl-C stops).")
@click.option("-n", "lines", type=click.IntRange(min=0), default=50, show_default=True,
              help="Show the last N records.")
@click.option("--item", "item_id", callback=item_id_arg, shell_complete=complete_item_id,
              help="Only the lines about this item (a short id works).")
@click.option("--since", help=f"From this time: {when.HELP}.")
@click.option("--unit", help="Read this systemd unit's journal (default: where the daemon logs).")
@click.pass_obj
def logs(session: Session, follow: bool, lines: int, item_id: str | None, since: str | None,
         unit: str | None) -> None:
    """The daemon's log: the journal under systemd, BASE_DIR/logs/trainer.log otherwise."""
    try:
        since_at = when.parse(since, utc_now()) if since else None
    except (ValueError, OverflowError):
        raise click.BadParameter(f"{since!r}: use {when.HELP}", param_hint="--since") from None
    layout = session.layout
    where = source(logfile.target(layout), bool(logfile.files(layout)), unit)
    if where is None:
        note(f"no daemon log here yet: looked for {layout.log_target} (written when the daemon starts) and "
             f"{layout.log_file}; start the daemon (trainer run --base-dir {layout.root}), or for one under "
             f"systemd: trainctl logs --unit trainer")
        finish(ExitCode.FAILED)
    try:
        if where.unit is None:
            _from_file(layout, follow, lines, logfile.Filter(item_id, since_at))
        else:
            _from_journal(where.unit, follow, lines, item_id, since_at)
    except KeyboardInterrupt:  # the way to leave -f
        pass


def _from_file(layout: Layout, follow: bool, lines: int, keep: logfile.Filter) -> None:
    shown, offset = logfile.last(layout, lines, keep)
    if not logfile.files(layout):
        note(f"{layout.log_file}: no log file yet (the daemon writes it from its start)"
             + ("; waiting for it" if follow else ""))
        if not follow:
            finish(ExitCode.FAILED)
    for record in shown:
        click.echo(record.text)
    if follow:
        for record in logfile.follow(layout.log_file, offset, keep):
            click.echo(record.text)



def _journalctl() -> str:
    import shutil  # here, not at the top: it costs every trainctl command ~5 ms of start-up

    path = shutil.which("journalctl")
    if path is None:
        note("the daemon logs to the journal, but journalctl is not here: read it where the daemon runs "
             "(or run the daemon outside systemd: it then writes BASE_DIR/logs/trainer.log)")
        finish(ExitCode.FAILED)
    return path


def _from_journal(unit: str, follow: bool, lines: int, item_id: str | None, since: datetime | None) -> None:
    import subprocess  # only here: it costs every other command ~6 ms of start-up

    argv = [_journalctl(), "-u", unit, "--no-pager"]
    if since is not None:
        argv += ["--since", f"@{since.timestamp():.0f}"]
    if item_id is not None:
        _item_from_journal(argv, follow, lines, item_id)
        return
    code = subprocess.call([*argv, "-n", str(lines), "-o", "short-iso", *(["-f"] if follow else [])])
    if code != 0:
        _journal_failed(code)


def _item_from_journal(argv: list[str], follow: bool, lines: int, item_id: str) -> None:
    """The journal's entries tagged TRAINER_ITEM=ID or naming the item: journalctl cannot match
    "either", so its JSON is read here (then, with -f, followed from the last entry's cursor)."""
    import subprocess

    import orjson

    result = subprocess.run([*argv, "-o", "json"], stdout=subprocess.PIPE)
    if result.returncode != 0:
        _journal_failed(result.returncode)
    entries = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
    matched = [entry for entry in entries if _about(entry, item_id)]
    for entry in matched[-lines:] if lines else []:
        click.echo(_entry_line(entry))
    if not follow:
        return
    after = ["--after-cursor", entries[-1]["__CURSOR"]] if entries else ["-n", "0"]
    with subprocess.Popen([*argv, "-o", "json", "-f", *after], stdout=subprocess.PIPE) as proc:
        for line in proc.stdout:
            entry = orjson.loads(line)
            if _about(entry, item_id):
                click.echo(_entry_line(entry))


def _text(value) -> str:
    """journalctl -o json gives a field with control characters as a list of byte values."""
    return bytes(value).decode("utf-8", "replace") if isinstance(value, list) else str(value or "")


def _about(entry: dict, item_id: str) -> bool:
    return _text(entry.get("TRAINER_ITEM")) == item_id or item_id in _text(entry.get("MESSAGE"))


def _entry_line(entry: dict) -> str:
    at = datetime.fromtimestamp(int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6).astimezone()
    who = f"{_text(entry.get('SYSLOG_IDENTIFIER')) or 'trainer'}[{_text(entry.get('_PID'))}]"
    return f"{at.strftime('%Y-%m-%dT%H:%M:%S%z')} {who}: {_text(entry.get('MESSAGE'))}"


def _journal_failed(code: int) -> None:
    note(f"journalctl failed (exit {code}): is there a journal, and may you read it "
         f"(join the systemd-journal or adm group)?")
    finish(ExitCode.FAILED)
