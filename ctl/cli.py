"""trainctl: each command is a few lines over the torch-free library in ``trainer``.

stdout carries data only (ids, tables, JSON); diagnostics go to stderr. Errors the user
can act on are one line, never a traceback; exit codes are ``trainer.exitcodes.ExitCode``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import orjson

from ctl import render
from trainer import clock
from trainer.config import Config, load_config
from trainer.errors import (
    ConfigError,
    FormatMismatch,
    InvalidData,
    LayoutError,
    NeedsRoot,
    NoSuchItem,
    NotABaseDir,
    TrainerError,
    WrongState,
)
from trainer.exitcodes import ExitCode
from trainer.ids import check_id
from trainer.spool import control, events, queue
from trainer.spool.fsutil import disk_refusal
from trainer.spool.layout import BASE_DIR_ENV, Layout, init_base, open_base
from trainer.spool.lock import lock_holder
from trainer.spool.status import collect
from trainer.states import ItemState, Liveness, Priority
from trainer.timefmt import utc_now

JSON_SCHEMA = 1
DEFAULT_BASE_DIR = "/var/lib/trainer"
PRIORITIES = click.Choice([p.value for p in Priority])


@dataclass
class Session:
    base_dir: Path
    config_path: Path | None
    _layout: Layout | None = None
    _config: Config | None = None

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = open_base(self.base_dir)
        return self._layout

    @property
    def config(self) -> Config:
        if self._config is None:
            if self.config_path is not None and not self.config_path.exists():
                raise ConfigError(f"--config {self.config_path}: no such file")
            self._config = load_config(self.config_path or self.layout.config_file)
        return self._config


def emit_json(data: dict) -> None:
    click.echo(orjson.dumps({"schema_version": JSON_SCHEMA, **data}, option=orjson.OPT_INDENT_2).decode())


def note(message: str) -> None:
    click.echo(f"trainctl: {message}", err=True)


def finish(code: ExitCode) -> None:
    raise SystemExit(int(code))


def item_id_arg(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else check_id(value)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
# readable=False: an unreadable base dir is ours to report (exit 77, naming the group to join).
@click.option("--base-dir", type=click.Path(path_type=Path, file_okay=False, readable=False),
              envvar=BASE_DIR_ENV, default=DEFAULT_BASE_DIR, show_default=True,
              help=f"The trainer's base directory (or set {BASE_DIR_ENV}).")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Config file (default: BASE_DIR/config.toml).")
@click.version_option(package_name="trainer", prog_name="trainctl")
@click.pass_context
def cli(ctx: click.Context, base_dir: Path, config_path: Path | None) -> None:
    """Feed and steer the trainer daemon. With no command, shows its status."""
    ctx.obj = Session(base_dir, config_path)
    if ctx.invoked_subcommand is None:
        ctx.invoke(status)


@cli.command()
@click.option("--demo", is_flag=True, help="Also build the tiny demo model and sample data (offline).")
@click.option("--link-config", type=click.Path(path_type=Path, dir_okay=False),
              help="Make a new base dir's config.toml a symlink to this file (the systemd units do).")
@click.pass_obj
def init(session: Session, demo: bool, link_config: Path | None) -> None:
    """Create the base directory layout and a commented default config (safe to re-run)."""
    from trainer.config import default_config_toml

    config_text = default_config_toml()
    if demo:
        from trainer.demo.config import DEMO_CONFIG

        config_text = DEMO_CONFIG + "\n" + "\n".join("# " + line if line and not line.startswith("#") else line
                                                       for line in config_text.splitlines()) + "\n"
    layout, created = init_base(session.base_dir, config_text, config_link=link_config)
    verb = "initialised" if created else "checked (already initialised)"
    note(f"{verb} {layout.root}; config: {layout.config_file}")
    if demo:
        import subprocess  # the model is built in its own process: trainctl never imports torch

        result = subprocess.run([sys.executable, "-m", "trainer.train.demo_model", str(layout.root)])
        if result.returncode != 0:
            note("building the demo model failed (see above)")
            finish(ExitCode.FAILED)
    note(f"queue files with: trainctl --base-dir {layout.root} enqueue FILE.jsonl, or copy them to "
         f"{layout.inbox}/.NAME then mv to {layout.inbox}/NAME")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=True))
@click.option("--priority", "-p", type=PRIORITIES, default="normal", show_default=True)
@click.option("--hold", is_flag=True, help="Queue it held: it waits until trainctl release.")
@click.option("--move", is_flag=True, help="Delete each file once it is safely queued.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.pass_obj
def enqueue(session: Session, files: tuple[Path, ...], priority: str, hold: bool, move: bool, quiet: bool) -> None:
    """Validate FILES and queue copies of them; prints one id per file.

    Either every file is queued or, if any is invalid, none is (exit 65, every problem listed).
    """
    from trainer.intake import enqueue  # here, not at the top: only enqueue pays for the validator

    layout = session.layout
    queued = enqueue.enqueue_batch(layout, list(files), limits=session.config.spool,
                                  priority=Priority(priority), hold=hold)
    for item in queued:
        meta = item.meta
        if not quiet:
            click.echo(meta.id)
            note(f"queued {meta.name} as {meta.id} ({meta.records:,} records, {render.size(meta.size)}, "
                 f"{'held' if hold else priority})")
        if move:
            kept = enqueue.delete_source(item)
            if kept:
                note(f"kept {item.source} although --move was given: {kept}")
    if not quiet and control.read_requests(layout).pause is not None:
        note("the queue is paused: nothing trains until trainctl resume")


@cli.command()
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


@cli.command(name="list")
@click.option("--all", "which", flag_value="all", help="Every item, done and failed included.")
@click.option("--failed", "which", flag_value="failed")
@click.option("--held", "which", flag_value="held")
@click.option("--done", "which", flag_value="done")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(session: Session, which: str | None, as_json: bool) -> None:
    """The queue: active, then pending in service order (default), or another state."""
    states = {
        None: [ItemState.ACTIVE, ItemState.PENDING],
        "all": list(ItemState),
        "failed": [ItemState.FAILED],
        "held": [ItemState.HELD],
        "done": [ItemState.DONE],
    }[which]
    items = queue.list_items(session.layout, states)
    if which is None:  # the active item first, then what comes next
        items.sort(key=lambda item: item.state is not ItemState.ACTIVE)
    if as_json:
        emit_json({"items": [render.item_dict(item) for item in items]})
    elif items:
        click.echo("\n".join(render.item_table(items)))
    else:
        note(f"no {which or 'pending or active'} items")


@cli.command()
@click.argument("item_id", callback=item_id_arg)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(session: Session, item_id: str, as_json: bool) -> None:
    """Everything about one item: metadata, errors and its events."""
    item = render.item_dict(queue.find(session.layout, item_id))
    history = events.read(session.layout, item_id=item_id).events
    if as_json:
        emit_json({"item": item, "events": history})
    else:
        click.echo("\n".join(render.item_lines(item, history)))


def _daemon_running(layout: Layout) -> bool:
    return lock_holder(layout) is not None


@cli.command()
@click.option("--reason", help="Why; shown by trainctl status.")
@click.pass_obj
def pause(session: Session, reason: str | None) -> None:
    """Pause after the current optimizer step (checkpointed; the pause survives restarts)."""
    control.send_pause(session.layout, reason)
    if _daemon_running(session.layout):
        note("pause requested: the daemon pauses after its current optimizer step")
    else:
        note("paused: the daemon is not running, and will start paused")


@cli.command()
@click.pass_obj
def resume(session: Session) -> None:
    """Lift a pause."""
    if control.send_resume(session.layout):
        note("resumed")
    else:
        note("not paused: nothing to resume")


@cli.command()
@click.option("--reason", help="Recorded in the item's errors.")
@click.pass_obj
def skip(session: Session, reason: str | None) -> None:
    """Stop training the current item after this step; it goes to failed (retry brings it back)."""
    layout = session.layout
    current = queue.active_item(layout)
    if not _daemon_running(layout):
        note("the daemon is not running: nothing is training, no skip request was left")
        finish(ExitCode.NOT_RUNNING)
    if current is None:
        note("nothing is training: no skip request was left")
        finish(ExitCode.FAILED)
    control.send_skip(layout, current.id, reason)
    note(f"skip requested for {current.id}: it goes to failed after the current optimizer step")


@cli.command()
@click.option("--reason")
@click.pass_obj
def stop(session: Session, reason: str | None) -> None:
    """Ask the daemon to checkpoint and exit (under systemd, prefer systemctl stop trainer)."""
    if not _daemon_running(session.layout):
        note("the daemon is not running")
        finish(ExitCode.NOT_RUNNING)
    control.send_stop(session.layout, reason)
    note("stop requested: the daemon checkpoints and exits after its current optimizer step")


@cli.command()
@click.pass_obj
def consolidate(session: Session) -> None:
    """Publish the trained model as a new version at the next idle moment (never mid-item)."""
    control.send_consolidate(session.layout)
    if _daemon_running(session.layout):
        note("consolidation requested: it runs once inbox, pending and active are empty")
    else:
        note("consolidation requested: it runs when the daemon next finds the queue empty")


@cli.command()
@click.argument("item_id", callback=item_id_arg)
@click.pass_obj
def hold(session: Session, item_id: str) -> None:
    """Keep a pending item out of training until release."""
    queue.hold(session.layout, item_id)
    note(f"{item_id} held")


@cli.command()
@click.argument("item_id", callback=item_id_arg)
@click.pass_obj
def release(session: Session, item_id: str) -> None:
    """Put a held item back in its queue."""
    item = queue.release(session.layout, item_id)
    note(f"{item_id} released to the {item.priority.value if item.priority else 'normal'} queue")


@cli.command()
@click.argument("item_id", required=False, callback=item_id_arg)
@click.option("--all-failed", is_flag=True, help="Retry every failed item.")
@click.pass_obj
def retry(session: Session, item_id: str | None, all_failed: bool) -> None:
    """Send a failed item back to its queue with its attempts reset, once its data validates."""
    if (item_id is None) == (not all_failed):
        raise click.UsageError("give an ITEM_ID or --all-failed (not both)")
    from trainer.intake import enqueue  # retry validates the data again

    if all_failed:
        retried, left = enqueue.retry_all_failed(session.layout, session.config.spool)
        for rid in retried:
            click.echo(rid)
        note(f"{len(retried)} failed item{'s' if len(retried) != 1 else ''} queued again")
        for line in left:
            note(line)
        if left:
            finish(ExitCode.DATA_INVALID)
        return
    enqueue.retry(session.layout, item_id, session.config.spool)
    note(f"{item_id} queued again (attempts reset)")


@cli.command()
@click.argument("item_id", callback=item_id_arg)
@click.pass_obj
def remove(session: Session, item_id: str) -> None:
    """Delete an item and its queued copy of the data (not the active item)."""
    queue.remove(session.layout, item_id)
    note(f"{item_id} removed")


@cli.command(name="move")
@click.argument("item_id", callback=item_id_arg)
@click.option("--priority", "-p", type=PRIORITIES, required=True)
@click.pass_obj
def move_(session: Session, item_id: str, priority: str) -> None:
    """Change a pending or held item's priority (it keeps its place by age)."""
    queue.move(session.layout, item_id, Priority(priority))
    note(f"{item_id} moved to {priority}")


@cli.command()
@click.argument("item_id", required=False, callback=item_id_arg)
@click.option("--idle", is_flag=True, help="Wait until inbox, pending and active are all empty.")
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up after this many seconds (exit 75).")
@click.option("--interval", type=click.FloatRange(min=0.01), default=0.2, show_default=True, hidden=True)
@click.pass_obj
def wait(session: Session, item_id: str | None, idle: bool, timeout: float | None, interval: float) -> None:
    """Wait for an item to finish (0 done, 1 failed) or for the queue to drain.

    Exits 3 at once if the daemon is not running, or as soon as it dies; 75 on timeout.
    """
    if (item_id is None) == (not idle):
        raise click.UsageError("give an ITEM_ID or --idle (not both)")
    layout = session.layout
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if item_id is not None:
            state = queue.find(layout, item_id).state
            if state is ItemState.DONE:
                finish(ExitCode.OK)
            if state is ItemState.FAILED:
                note(f"{item_id} failed: trainctl show {item_id}")
                finish(ExitCode.FAILED)
        elif queue.is_idle(layout):
            finish(ExitCode.OK)
        if not _daemon_running(layout):
            note("the daemon is not running: nothing would ever finish")
            finish(ExitCode.NOT_RUNNING)
        if deadline is not None and time.monotonic() >= deadline:
            note("timed out")
            finish(ExitCode.TIMEOUT)
        time.sleep(interval)


@cli.command()
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


@cli.command()
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


@cli.command("install-unit")
@click.option("--venv", type=click.Path(path_type=Path, file_okay=False), default=sys.prefix, show_default="this venv",
              help="The venv the units run the daemon from.")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default="/", show_default=True,
              help="Install under this directory instead (staging an image); the running system is left alone.")
@click.option("--units", "source", type=click.Path(path_type=Path, file_okay=False),
              help="The directory holding the unit files (default: the checkout's systemd/).")
def install_unit(venv: Path, root: Path, source: Path | None) -> None:
    """Install trainer.service, trainer@.service, the trainer user and an example config.

    Never enables or starts anything, never overwrites /etc/trainer/config.toml.
    """
    from trainer.daemon import units
    units.install(root=root, venv=venv.absolute(), source=source or units.units_source(), say=note)
    note("next: systemctl enable --now trainer   (or trainer@0 trainer@1 ... for one daemon per GPU)")
    note("      usermod -aG trainer USER          (who may use trainctl; log in again after)")
    note("      put a model in /var/lib/trainer/models/base, or set [model] path in /etc/trainer/config.toml")


EXIT_FOR_ERROR = {
    NoSuchItem: ExitCode.NO_SUCH_ITEM,
    InvalidData: ExitCode.DATA_INVALID,
    ConfigError: ExitCode.CONFIG,
    NotABaseDir: ExitCode.CONFIG,
    FormatMismatch: ExitCode.CONFIG,
    LayoutError: ExitCode.CONFIG,
    WrongState: ExitCode.FAILED,
    NeedsRoot: ExitCode.NO_PERMISSION,
}


def _group_of(path: str | None) -> str:
    """The group that owns ``path`` (or the nearest parent we may stat): the one to join."""
    import grp

    probe = Path(path) if path else None
    while probe is not None and probe != probe.parent:
        try:
            return grp.getgrgid(os.stat(probe).st_gid).gr_name
        except (OSError, KeyError):
            probe = probe.parent
    return "trainer"


def main(argv: list[str] | None = None) -> None:
    try:
        _run(argv)
    finally:
        _report_unrecorded_events()


def _report_unrecorded_events() -> None:
    """Event lines the disk refused (the changes they record are done): said, not lost silently."""
    for line in events.unrecorded():
        note(f"warning: the disk refused this event log line, it is not recorded: "
             f"{line.decode(errors='replace').rstrip()}")


def _run(argv: list[str] | None) -> None:
    try:
        cli.main(args=argv, prog_name="trainctl", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        note("aborted")
        sys.exit(ExitCode.FAILED)
    except TrainerError as exc:
        note(str(exc))
        for line in getattr(exc, "details", []):
            click.echo(line, err=True)
        sys.exit(EXIT_FOR_ERROR.get(type(exc), ExitCode.FAILED))
    except PermissionError as exc:
        group = _group_of(exc.filename)
        note(f"permission denied: {exc.filename or exc}: run as the daemon's user or join its group "
             f"(sudo usermod -aG {group} $USER, then log in again)")
        sys.exit(ExitCode.NO_PERMISSION)
    except BrokenPipeError:
        # The reader went away (trainctl list | head): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(ExitCode.OK)
    except OSError as exc:
        refused = disk_refusal(exc)
        if refused is not None:  # full, over quota or read-only: what to do about it
            note(f"{render.display(str(refused))}: free some space on it (or make it writable) and try again")
            sys.exit(ExitCode.FAILED)
        # An I/O error, a name too long...: one line naming the path.
        where = f"{render.display(exc.filename)}: " if exc.filename else ""
        note(f"{where}{exc.strerror or exc}")
        sys.exit(ExitCode.FAILED)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(ExitCode.OK)
