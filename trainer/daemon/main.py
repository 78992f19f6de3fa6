"""``trainer run``: parse the command line, open the base dir, load the config, run the service.

    trainer run [--base-dir DIR] [--config FILE] [--exit-when-idle]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainer.config import load_config
from trainer.errors import ConfigError, TrainerError
from trainer.exitcodes import ExitCode
from trainer.spool.layout import BASE_DIR_ENV, open_base


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trainer", description="The continuous fine-tuning daemon.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground (systemd runs exactly this)")
    run.add_argument("--base-dir", type=Path, default=Path(os.environ.get(BASE_DIR_ENV, "/var/lib/trainer")))
    run.add_argument("--config", type=Path)
    run.add_argument("--exit-when-idle", action="store_true", help="exit 0 once inbox, pending and active are empty")
    args = parser.parse_args(argv)
    # Whatever umask it was started with, nothing the daemon creates is open to others (the
    # unit sets 0007 anyway): training data and weights may be private, and a world-writable
    # checkpoint could be swapped under it. The spool sets its own modes; this covers the
    # engine's checkpoints, snapshots and models.
    os.umask(os.umask(0) | 0o007)
    from trainer.daemon import logs

    logs.setup()
    try:
        layout = open_base(args.base_dir)
        if args.config is not None and not args.config.exists():
            raise ConfigError(f"--config {args.config}: no such file")
        config = load_config(args.config or layout.config_file)
    except TrainerError as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        sys.exit(ExitCode.CONFIG)
    from trainer.daemon.service import Daemon

    daemon = Daemon(layout, config, config_path=args.config)
    daemon.signals.install()
    try:
        code = daemon.run(exit_when_idle=args.exit_when_idle)
    except ConfigError as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        code = ExitCode.CONFIG
    sys.exit(int(code))


if __name__ == "__main__":
    main()
