"""``plot``: an item's (or every item's) training curve, in the terminal or as a PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from ctl import chart
from ctl.session import Session, complete_item_id, finish, item_id_arg, note
from trainer.errors import NoSuchItem
from trainer.exitcodes import ExitCode
from trainer.spool import metrics, queue
from trainer.spool.item import display_name
from trainer.spool.layout import Layout

# --metric -> (which lines of metrics/ID.jsonl, the field, its x: the model's global step)
METRICS = {
    "loss": ("steps", "loss", "global_step"),
    "eval_loss": ("evals", "eval_loss", "step"),
    "lr": ("steps", "lr", "global_step"),
    "tokens_per_s": ("steps", "tokens_per_s", "global_step"),
}


@dataclass(frozen=True)
class Curve:
    item_id: str
    name: str
    points: list[tuple[float, float]]


def curve(layout: Layout, item_id: str, metric: str) -> tuple[Curve, int]:
    """One item's points for ``metric`` (x: global step), and its metrics file's unreadable lines."""
    kind, field, x_field = METRICS[metric]
    log = metrics.read(layout, item_id)
    points = [(float(r.get(x_field, r["step"])), float(r[field])) for r in getattr(log, kind)
              if isinstance(r.get(field), (int, float)) and not isinstance(r.get(field), bool)]
    try:
        meta = queue.find(layout, item_id).meta
        name = display_name(meta.name) if meta and meta.name else ""
    except NoSuchItem:  # removed since: its figures stay
        name = ""
    return Curve(item_id, name, points), log.unreadable_lines


def default_item(layout: Layout) -> str | None:
    """The item training now, else the one whose figures were written last."""
    active = queue.active_item(layout)
    if active is not None:
        return active.id
    written = metrics.item_ids(layout)
    return written[-1] if written else None


@click.command()
@click.argument("item_id", required=False, callback=item_id_arg, shell_complete=complete_item_id)
@click.option("--all", "all_items", is_flag=True, help="Every item with figures, in training order, on one axis.")
@click.option("--metric", type=click.Choice(list(METRICS)), default="loss", show_default=True)
@click.option("--png", type=click.Path(path_type=Path, dir_okay=False), help="Also write the chart to FILE as a PNG "
              "image (needs matplotlib: pip install 'trainer[plot]').")
@click.option("--width", type=click.IntRange(min=20), help="Characters (default: the terminal's width).")
@click.option("--height", type=click.IntRange(min=3), default=12, show_default=True, help="Lines of the chart.")
@click.pass_obj
def plot(session: Session, item_id: str | None, all_items: bool, metric: str, png: Path | None,
         width: int | None, height: int) -> None:
    """A training curve: loss (or eval_loss, lr, tokens_per_s) over the model's global step.

    ITEM defaults to the item training now, else the last one trained."""
    layout = session.layout
    if all_items and item_id:
        raise click.UsageError("give an ITEM or --all, not both")
    ids = metrics.item_ids(layout) if all_items else [item_id or default_item(layout)]
    if ids in ([], [None]):
        note(f"nothing to plot yet: no item has trained a step (no files in {layout.root / 'metrics'})")
        finish(ExitCode.FAILED)
    curves, unreadable = [], 0
    for one in ids:
        c, bad = curve(layout, one, metric)
        unreadable += bad
        if c.points:
            curves.append(c)
    curves.sort(key=lambda c: c.points[0][0])
    if unreadable:
        note(f"skipped {unreadable} unreadable line(s) in the metrics files")
    if not curves:
        where = metrics.path(layout, ids[0]) if len(ids) == 1 else layout.root / "metrics"
        hint = " (the item has no evaluation: is evaluation on?)" if metric == "eval_loss" else ""
        note(f"no {metric} figures in {where}{hint}")
        finish(ExitCode.FAILED)
    for line in _text(curves, metric, width, height):
        click.echo(line)
    if png is not None:
        _png(curves, metric, png)
        note(f"wrote {png}")


def _text(curves: list[Curve], metric: str, width: int | None, height: int) -> list[str]:
    if width is None:
        import shutil  # only here: it costs every other command ~5 ms of start-up

        width = min(shutil.get_terminal_size((80, 24)).columns, 120)
    marks = [chr(ord("a") + n % 26) for n in range(len(curves))]
    series = [chart.Series(mark if len(curves) > 1 else "", c.points) for mark, c in zip(marks, curves)]
    first, last = curves[0].points[0], curves[-1].points[-1]
    subject = f"{len(curves)} items" if len(curves) > 1 else f"{curves[0].item_id} {curves[0].name}".rstrip()
    lines = [f"{metric} of {subject}: global steps {first[0]:.0f}-{last[0]:.0f}, "
             f"{chart.number(first[1])} -> {chart.number(last[1])}"]
    lines += chart.render(series, width=width, height=height)
    if len(curves) > 1:
        for mark, c in zip(marks, curves):
            lines.append(f"  {mark}  {c.item_id}  {c.name}".rstrip()
                         + f"  steps {c.points[0][0]:.0f}-{c.points[-1][0]:.0f}")
    return lines


def _png(curves: list[Curve], metric: str, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        note("--png needs matplotlib, which is not installed here: pip install 'trainer[plot]' "
             "(into trainctl's environment), or use the chart above")
        finish(ExitCode.FAILED)
    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 4.5), dpi=100)
    for c in curves:
        xs, ys = zip(*c.points)
        axes.plot(xs, ys, marker="o" if len(xs) < 30 else None, linewidth=1,
                  label=f"{c.item_id[-8:]} {c.name}".rstrip())
    axes.set_xlabel("global step")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    if len(curves) > 1:
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot.close(figure)
