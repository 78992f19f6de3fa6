"""Evaluation and the regression gate's candidates: ``eval``, ``promote``, ``discard``.

``eval`` runs ``python -m trainer.train.evaluate`` in its own process (trainctl never imports
torch): it loads each version beside the daemon, which goes on training, so it needs the
memory of one more copy of the model. ``promote`` and ``discard`` are renames in ``models/``
(``trainer.spool.candidates``): no daemon needed.
"""

from __future__ import annotations

import subprocess
import sys

import click
import orjson

from ctl import render
from ctl.session import Session, emit_json, finish, note
from trainer.exitcodes import ExitCode
from trainer.spool import candidates


@click.command("eval")
@click.argument("versions", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def eval_(session: Session, versions: tuple[str, ...], as_json: bool) -> None:
    """Evaluate VERSIONS (vNNN, a held-back candidate, or base; default: the newest) on every
    eval set: eval loss, perplexity, token accuracy, and the sample prompts' outputs."""
    layout = session.layout
    session.config  # a bad config is reported here, in one line, not by the child
    result = subprocess.run([sys.executable, "-m", "trainer.train.evaluate", str(layout.root), *versions],
                            stdout=subprocess.PIPE)
    if result.returncode != 0:
        finish(ExitCode.NO_SUCH_ITEM if result.returncode == ExitCode.NO_SUCH_ITEM else ExitCode.FAILED)
    results = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
    if as_json:
        emit_json({"versions": results})
        return
    click.echo("\n".join(render.eval_lines(results)))


@click.command()
@click.argument("version")
@click.option("--force", is_flag=True, help="Promote even if it still fails the regression gate.")
@click.pass_obj
def promote(session: Session, version: str, force: bool) -> None:
    """Publish a version the regression gate held back (models/.candidates/VERSION) as the current one.

    Without --force it is promoted only if it passes the gate now, decided again on its
    recorded numbers with today's [eval] gate_tolerance, and the version it was compared with
    is still the current one."""
    previous = candidates.promote(session.layout, version, tolerance=session.config.eval.gate_tolerance,
                                  force=force)
    note(f"{version} promoted: models/LATEST names it (it was {previous or 'unset'})")


@click.command()
@click.argument("version")
@click.pass_obj
def discard(session: Session, version: str) -> None:
    """Remove a version the regression gate held back (training is not affected)."""
    candidates.discard(session.layout, version)
    note(f"{version} discarded")
