"""What every trainctl command shares: the session (base dir and config, opened on first use),
output helpers and argument checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import orjson

from trainer.config import Config, load_config
from trainer.errors import ConfigError
from trainer.exitcodes import ExitCode
from trainer.ids import check_id
from trainer.spool.layout import Layout, open_base
from trainer.spool.lock import lock_holder
from trainer.states import Priority

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




def daemon_running(layout: Layout) -> bool:
    return lock_holder(layout) is not None
