"""``trainer``: the daemon's command line (click, like trainctl).

    trainer run [--base-dir DIR] [--config FILE] [--exit-when-idle] [--nproc N]
    trainer --version | -h

Start-up stays lean: click here, torch only once the daemon loads the model.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from trainer.config import load_config
from trainer.errors import ConfigError, TrainerError
from trainer.exitcodes import ExitCode
from trainer.spool.layout import BASE_DIR_ENV, open_base
from trainer.spool.lock import lock_holder

DEFAULT_BASE_DIR = "/var/lib/trainer"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trainer", prog_name="trainer")
def cli() -> None:
    """The continuous fine-tuning daemon (steer it with trainctl)."""


@cli.command()
@click.option("--base-dir", type=click.Path(path_type=Path), envvar=BASE_DIR_ENV,
              default=DEFAULT_BASE_DIR, show_default=True, help=f"The base directory (or set {BASE_DIR_ENV}).")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Config file (default: BASE_DIR/config.toml).")
@click.option("--exit-when-idle", is_flag=True, help="Exit 0 once inbox, pending and active are empty.")
@click.option("--nproc", type=click.IntRange(min=1), help="Worker processes on this node, one trainer over all "
              "of them (default: distributed.nproc of the config, 1).")
def run(base_dir: Path, config_path: Path | None, exit_when_idle: bool, nproc: int | None) -> None:
    """Run the daemon in the foreground (systemd runs exactly this)."""
    # Whatever umask it was started with, nothing the daemon creates is open to others (the
    # unit sets 0007 anyway): training data and weights may be private, and a world-writable
    # checkpoint could be swapped under it. The spool sets its own modes; this covers the
    # engine's checkpoints, snapshots and models.
    os.umask(os.umask(0) | 0o007)
    from trainer.daemon import logs

    logs.setup()
    try:
        layout = open_base(base_dir)
        if config_path is not None and not config_path.exists():
            raise ConfigError(f"--config {config_path}: no such file")
        config = load_config(config_path or layout.config_file)
        if nproc is not None:
            config = replace(config, distributed=replace(config.distributed, nproc=nproc))
        if config.distributed.nproc > 1 or config.distributed.nnodes > 1:
            from trainer.daemon import launch

            launch.check(config.distributed, lora=config.model.lora)
    except TrainerError as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        sys.exit(ExitCode.CONFIG)
    if lock_holder(layout) is None:  # else this one exits 73 at once: the running daemon's log stays its own
        logs.to_base_dir(layout)
    if config.distributed.nproc > 1 or config.distributed.nnodes > 1:
        sys.exit(int(launch.run_launcher(layout, config, config_path, exit_when_idle)))
    from trainer.daemon.service import Daemon
    from trainer.daemon.sinks import sinks_for

    daemon = Daemon(layout, config, config_path=config_path, metrics=sinks_for(layout, config))
    daemon.signals.install()
    try:
        code = daemon.run(exit_when_idle=exit_when_idle)
    except ConfigError as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        code = ExitCode.CONFIG
    sys.exit(int(code))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="trainer")


if __name__ == "__main__":
    main()
