"""Setting up: ``init`` (a base dir) and ``install-unit`` (the systemd units)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ctl.session import Session, finish, note
from trainer.exitcodes import ExitCode
from trainer.spool.layout import init_base


@click.command()
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


@click.command("install-unit")
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
