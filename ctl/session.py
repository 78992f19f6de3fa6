"""What every trainctl command shares: the session (base dir and config, opened on first use),
output helpers and argument checks."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click
import orjson

from trainer.errors import ConfigError
from trainer.exitcodes import ExitCode
from trainer.ids import check_id
from trainer.spool.layout import Layout, PlainLayout, open_base, open_plain
from trainer.spool.lock import lock_holder
from trainer.states import Priority

if TYPE_CHECKING:
    from trainer.config import Config

JSON_SCHEMA = 1
DEFAULT_BASE_DIR = "/var/lib/trainer"
PRIORITIES = click.Choice([p.value for p in Priority])


class Session:
    """The base dir and config of one trainctl run, each opened on first use. (A plain class:
    a dataclass would cost every command ~0.5 ms of start-up to build.) The paths are kept as
    given, strings: ``pathlib`` is imported by what needs a ``Path`` (not by ``status``)."""

    def __init__(self, base_dir: str, config_path: str | None) -> None:
        self.base_dir, self.config_path = base_dir, config_path
        # Said at once, whether or not this command ends up reading the config (status seldom does).
        if config_path is not None and not os.path.exists(config_path):
            raise ConfigError(f"--config {config_path}: no such file")
        self._layout: Layout | None = None
        self._plain_layout: PlainLayout | None = None
        self._config: Config | None = None

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = open_base(self.base_dir)
        return self._layout

    @property
    def plain_layout(self) -> PlainLayout:
        """The base dir with its paths as strings, for a command that only reads it through
        ``os`` calls (status): checked like ``layout``, without importing ``pathlib``."""
        if self._plain_layout is None:
            self._plain_layout = open_plain(self.base_dir)
        return self._plain_layout

    @property
    def config(self) -> Config:
        if self._config is None:
            from pathlib import Path

            from trainer.config import (
                load_config,  # on first use: status seldom needs it
            )

            self._config = load_config(Path(self.config_path) if self.config_path else self.layout.config_file)
        return self._config


def emit_json(data: dict) -> None:
    click.echo(orjson.dumps({"schema_version": JSON_SCHEMA, **data}, option=orjson.OPT_INDENT_2).decode())


def note(message: str) -> None:
    click.echo(f"trainctl: {message}", err=True)


def finish(code: ExitCode) -> None:
    raise SystemExit(int(code))


def item_id_arg(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The one place an ITEM_ID is read: a full id, or any unique prefix of its random part
    (``3fa9`` for ``...Z-3fa9c1b2``, as ``trainctl list`` shows), like git's short hashes."""
    if value is None or ctx.resilient_parsing:  # completing: nothing to resolve yet
        return value
    from trainer.spool.names import resolve

    session = ctx.find_object(Session)
    if session is None:  # parsed outside a trainctl run (a test of the command alone)
        return check_id(value)
    return resolve(session.layout, value)


def complete_item_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Shell completion of an ITEM_ID: the random parts (or whole ids) that start with what
    was typed, with each item's state as the description."""
    from click.shell_completion import CompletionItem

    from trainer.spool.layout import open_base
    from trainer.spool.names import random_part

    base = ctx.find_root().params.get("base_dir") or DEFAULT_BASE_DIR
    try:
        from trainer.spool.names import all_ids

        ids = all_ids(open_base(base))
    except Exception:  # completion must never print a traceback into the shell
        return []
    short = [CompletionItem(random_part(i), help=state) for i, state in sorted(ids.items())
             if random_part(i).startswith(incomplete)]
    if short:
        return short
    return [CompletionItem(i, help=state) for i, state in sorted(ids.items()) if i.startswith(incomplete)]




def daemon_running(layout: Layout) -> bool:
    return lock_holder(layout) is not None
