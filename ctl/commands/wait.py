"""``trainctl wait``: until an item finishes or the queue drains, showing progress on a terminal."""

from __future__ import annotations

import sys
import time

import click

from ctl import style
from ctl.session import (
    Session,
    complete_item_id,
    daemon_running,
    emit_json,
    finish,
    item_id_arg,
    note,
)
from trainer.exitcodes import ExitCode
from trainer.spool import control, queue
from trainer.states import ItemState


def progress_line(state: dict | None, item_id: str | None) -> str | None:
    """``step 12/100 (12%)  loss 1.2345`` for the item training now (the one waited for, if
    any), from the daemon's state file; None when there is nothing to show."""
    item = (state or {}).get("item")
    if not isinstance(item, dict) or (item_id is not None and item.get("id") != item_id):
        return None
    step, total = item.get("step"), item.get("total")
    if not isinstance(step, int) or not isinstance(total, int) or total <= 0:
        return None
    line = f"{str(item.get('id', ''))[-8:]}  step {step}/{total} ({100 * step / total:.0f}%)"
    loss = item.get("loss")
    if isinstance(loss, (int, float)):
        line += f"  loss {loss:.4f}"
    if state.get("state") == "paused":
        line += "  paused"
    return line


def _final_loss(layout, item_id: str) -> str:
    from ctl.itemview import final_loss, metrics_tail

    loss = final_loss(metrics_tail(layout, item_id)["last"])
    return f" (final loss {loss:.4f})" if loss is not None else ""


class Ticker:
    """One progress line on a terminal's stderr, rewritten in place; nothing anywhere else."""

    def __init__(self, on: bool) -> None:
        self.on, self.shown = on, ""

    def show(self, line: str | None) -> None:
        if self.on and line and line != self.shown:
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
            self.shown = line

    def clear(self) -> None:
        if self.on and self.shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self.shown = ""


@click.command()
@click.argument("item_id", required=False, callback=item_id_arg, shell_complete=complete_item_id)
@click.option("--idle", is_flag=True, help="Wait until inbox, pending and active are all empty.")
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up after this many seconds (exit 75).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=0.2, show_default=True, hidden=True)
@click.pass_obj
def wait(session: Session, item_id: str | None, idle: bool, timeout: float | None, as_json: bool,
         interval: float) -> None:
    """Wait for an item to finish (0 done, 1 failed) or for the queue to drain.

    On a terminal it shows the step and loss as they change, then one final line.
    Exits 3 at once if the daemon is not running, or as soon as it dies; 75 on timeout.
    """
    if (item_id is None) == (not idle):
        raise click.UsageError("give an ITEM_ID or --idle (not both)")
    layout = session.layout
    ticker = Ticker(not as_json and style.wanted(sys.stderr))
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout

    def end(code: ExitCode, outcome: str, line: str) -> None:
        ticker.clear()
        if as_json:
            emit_json({"id": item_id, "outcome": outcome, "exit_code": int(code),
                       "waited_s": round(time.monotonic() - started, 3)})
        note(line)
        finish(code)

    what = item_id or "the queue"
    while True:
        if item_id is not None:
            state = queue.find(layout, item_id).state
            if state is ItemState.DONE:
                end(ExitCode.OK, "done", f"{item_id} done{_final_loss(layout, item_id)}: trainctl show {item_id}")
            if state is ItemState.FAILED:
                end(ExitCode.FAILED, "failed", f"{item_id} failed: trainctl show {item_id}")
        elif queue.is_idle(layout):
            end(ExitCode.OK, "idle", "idle: inbox, pending and active are empty")
        if not daemon_running(layout):
            end(ExitCode.NOT_RUNNING, "not-running", "the daemon is not running: nothing would ever finish")
        if deadline is not None and time.monotonic() >= deadline:
            end(ExitCode.TIMEOUT, "timeout", f"timed out waiting for {what}")
        if ticker.on:
            ticker.show(progress_line(control.read_state(layout)[0], item_id))
        time.sleep(interval)
