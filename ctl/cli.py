"""trainctl: each command is a few lines over the torch-free library in ``trainer``.

stdout carries data only (ids, tables, JSON); diagnostics go to stderr. Errors the user
can act on are one line, never a traceback; exit codes are ``trainer.exitcodes.ExitCode``.

The commands live in ``ctl/commands/``; ``COMMANDS`` names where each is, and the group
imports a command's module only when that command runs (or help lists them), so start-up
costs what the one command needs.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from ctl import render
from ctl.session import DEFAULT_BASE_DIR, Session, note
from trainer.errors import (
    AmbiguousId,
    ConfigError,
    FormatMismatch,
    InvalidData,
    LayoutError,
    NeedsRoot,
    NoSuchItem,
    NotABaseDir,
    TrainerError,
    UnknownVersion,
    WrongState,
)
from trainer.exitcodes import ExitCode
from trainer.spool.fsutil import disk_refusal
from trainer.spool.layout import BASE_DIR_ENV

# command name -> "module:function" under ctl.commands, in the order help lists them.
COMMANDS = {
    "init": "setup:init",
    "enqueue": "queue:enqueue",
    "status": "status:status",
    "list": "queue:list_",
    "show": "queue:show",
    "pause": "steer:pause",
    "resume": "steer:resume",
    "skip": "steer:skip",
    "stop": "steer:stop",
    "consolidate": "steer:consolidate",
    "hold": "queue:hold",
    "release": "queue:release",
    "retry": "queue:retry",
    "remove": "queue:remove",
    "move": "queue:move_",
    "wait": "wait:wait",
    "versions": "versions:versions_",
    "rollback": "versions:rollback",
    "history": "history:history",
    "logs": "logs:logs",
    "plot": "plot:plot",
    "report": "report:report",
    "install-unit": "setup:install_unit",
    "eval": "evaluate:eval_",
    "promote": "evaluate:promote",
    "discard": "evaluate:discard",
}


# click builds a command's help option on first use, and its --version option, with their
# words from gettext, whose first call imports locale (~1 ms of every command's start-up, for
# translations click does not ship): trainctl makes both itself, with the same words.
HELP_NAMES = ["-h", "--help"]  # the group's, which every command inherits


def _show_help(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(ctx.get_help(), color=ctx.color)
        ctx.exit()


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from importlib.metadata import version

        click.echo(f"trainctl, version {version('trainer')}", color=ctx.color)
        ctx.exit()


def with_help(command: click.Command) -> click.Command:
    """``command`` with the help option click would make for it, made here (see HELP_NAMES).
    It goes where click keeps the one it made; were that to change, click makes its own (and
    tests/ctl/test_output.py finds locale imported again)."""
    if getattr(command, "_help_option", False) is None:
        command._help_option = click.Option([*HELP_NAMES, "_help"], is_flag=True, expose_value=False, is_eager=True,
                                            help="Show this message and exit.", callback=_show_help)
    return command


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, from ``COMMANDS``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, function = where.split(":")
        return with_help(getattr(importlib.import_module(f"ctl.commands.{module}"), function))


@with_help
@click.group(cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": HELP_NAMES})
# Plain strings, made paths below: ours are the checks (an unreadable base dir is exit 77,
# naming the group to join; open_base and load_config name any other problem), and click.Path
# would cost every command ~1 ms of start-up (it imports locale).
@click.option("--base-dir", metavar="DIRECTORY", envvar=BASE_DIR_ENV, default=DEFAULT_BASE_DIR, show_default=True,
              help=f"The trainer's base directory (or set {BASE_DIR_ENV}).")
@click.option("--config", "config_path", metavar="FILE", help="Config file (default: BASE_DIR/config.toml).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, help="Show the version and exit.",
              callback=_show_version)
@click.pass_context
def cli(ctx: click.Context, base_dir: str, config_path: str | None) -> None:
    """Feed and steer the trainer daemon. With no command, shows its status."""
    ctx.obj = Session(base_dir, config_path or None)
    if ctx.invoked_subcommand is None:
        ctx.invoke(cli.get_command(ctx, "status"))


EXIT_FOR_ERROR = {
    NoSuchItem: ExitCode.NO_SUCH_ITEM,
    UnknownVersion: ExitCode.NO_SUCH_ITEM,
    InvalidData: ExitCode.DATA_INVALID,
    ConfigError: ExitCode.CONFIG,
    NotABaseDir: ExitCode.CONFIG,
    FormatMismatch: ExitCode.CONFIG,
    LayoutError: ExitCode.CONFIG,
    WrongState: ExitCode.FAILED,
    NeedsRoot: ExitCode.NO_PERMISSION,
    AmbiguousId: ExitCode.USAGE,  # a short id that names several items: say more
}


def _group_of(path: str | None) -> str:
    """The group that owns ``path`` (or the nearest parent we may stat): the one to join."""
    import grp
    from pathlib import Path  # on this error path only

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
    events = sys.modules.get("trainer.spool.events")
    if events is None:  # never imported by this command: it wrote no event (status, list)
        return
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
