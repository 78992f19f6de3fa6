"""Published versions: ``versions``, ``rollback``, and what ``show vNNN`` / ``show ITEM`` say of them."""

from __future__ import annotations

from pathlib import Path

import click

from ctl import render
from ctl.session import Session, daemon_running, emit_json, item_id_arg, note
from trainer.spool import control, versions
from trainer.spool.layout import Layout

CANDIDATES = ".candidates"  # versions the regression gate held back (the evaluation's)


def is_version(text: str) -> bool:
    return versions.is_name(text)


def _figure(value, places: int) -> str:
    """A recorded number for reading (metadata written by any release: maybe missing or text)."""
    return f"{value:.{places}f}" if isinstance(value, (int, float)) else "?"


def item_or_version_arg(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``show``'s argument: an item id (or a short form of one), or a version name (v001)."""
    if value is None or versions.is_name(value):
        return value
    return item_id_arg(ctx, param, value)


def _rows(layout: Layout) -> list[tuple[str, str, dict]]:
    """(name, where, metadata) for every published version, oldest first, then held-back ones."""
    models = versions.models_dir(layout)
    rows = [(name, "published", versions.read(models, name) or {}) for name in versions.names(models)]
    held = models / CANDIDATES
    rows += [(name, "held back", versions.read(held, name) or {}) for name in versions.names(held)]
    return rows


def _eval_sets(meta: dict) -> dict:
    sets = (meta.get("eval") or {}).get("sets") if isinstance(meta.get("eval"), dict) else None
    return sets if isinstance(sets, dict) else {}


def _summary(name: str, where: str, meta: dict, latest: str | None) -> dict:
    items = versions.lineage_items(meta)
    tokens = [i.get("tokens") for i in items if isinstance(i.get("tokens"), int)]
    return {"version": name, "status": where, "latest": name == latest, "created_at": meta.get("created_at"),
            "global_step": meta.get("global_step"), "parent": meta.get("parent"), "lora": meta.get("lora"),
            "items": len(items) if "lineage" in meta else None, "tokens": sum(tokens) if tokens else None,
            "eval_loss": {s: r.get("loss") for s, r in _eval_sets(meta).items() if isinstance(r, dict)}}


def _latest(layout: Layout) -> str | None:
    try:
        return (versions.models_dir(layout) / "LATEST").read_text().strip() or None
    except OSError:
        return None


def _table(rows: list[dict]) -> list[str]:
    sets = sorted({s for row in rows for s in row["eval_loss"]})
    header = ["VERSION", "STEP", "PARENT", "ITEMS", "TOKENS", *[f"LOSS:{s}" for s in sets], "CREATED", "STATUS"]
    lines = [header]
    for row in rows:
        loss = [f"{row['eval_loss'][s]:.4f}" if isinstance(row["eval_loss"].get(s), (int, float)) else "-"
                for s in sets]
        status = row["status"] + (" (latest)" if row["latest"] else "")
        lines.append([row["version"], str(row["global_step"] or "-"), render.display(row["parent"] or "-"),
                      "-" if row["items"] is None else str(row["items"]),
                      "-" if row["tokens"] is None else f"{row['tokens']:,}", *loss,
                      render.display(row["created_at"] or "-")[:19], status])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]


@click.command(name="versions")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def versions_(session: Session, as_json: bool) -> None:
    """The published versions, oldest first: step, parent, items trained since it, eval loss."""
    layout = session.layout
    latest = _latest(layout)
    rows = [_summary(name, where, meta, latest) for name, where, meta in _rows(layout)]
    if as_json:
        emit_json({"versions": rows, "latest": latest})
    elif rows:
        click.echo("\n".join(_table(rows)))
    else:
        note("no version published yet (one is made when the queue is idle after training, or on trainctl consolidate)")


def _where(layout: Layout, name: str) -> tuple[Path, dict]:
    models = versions.models_dir(layout)
    meta = versions.read(models, name)
    if meta is None and versions.read(models / CANDIDATES, name) is not None:
        return models / CANDIDATES / name, versions.read(models / CANDIDATES, name)
    return models / name, versions.require(models, name)


def _version_lines(name: str, path: Path, meta: dict) -> list[str]:
    lineage = meta.get("lineage") if isinstance(meta.get("lineage"), dict) else None
    lines = [f"version:     {name}", f"path:        {path}", f"created:     {meta.get('created_at')}",
             f"global step: {meta.get('global_step')}   tokens seen: {meta.get('tokens_seen')}",
             f"parent:      {meta.get('parent')}", f"lora:        {meta.get('lora')}"]
    if (path / "adapter").is_dir():
        lines.append(f"adapter:     {path / 'adapter'} (PEFT; base {meta.get('trained_from')})")
    if lineage is None:
        lines.append("lineage:     not recorded (a version made before lineage was kept)")
    else:
        steps = lineage.get("steps") or ["?", "?"]
        lines += [f"base model:  {lineage.get('base')}   config hash: {lineage.get('config_hash')}",
                  f"steps:       {steps[0]}-{steps[1]}", "items trained since its parent:"]
        for item in versions.lineage_items(meta):
            lines.append(f"  {item.get('id')}  {render.display(item.get('name') or '?')}  "
                         f"{item.get('records')} records  "
                         f"{item.get('tokens')} tokens  steps {item.get('first_step')}-{item.get('last_step')}")
        for item in lineage.get("partial") or []:
            lines.append(f"  {item.get('id')}  left mid-way (skipped or failed): steps "
                         f"{item.get('first_step')}-{item.get('last_step')}")
    for set_name, result in sorted(_eval_sets(meta).items()):
        if isinstance(result, dict):
            lines.append(f"eval {render.display(set_name)}: loss {_figure(result.get('loss'), 4)} "
                         f"perplexity {_figure(result.get('perplexity'), 2)} "
                         f"token accuracy {_figure(result.get('token_accuracy'), 3)}")
    gate = (meta.get("eval") or {}).get("gate") if isinstance(meta.get("eval"), dict) else None
    if isinstance(gate, dict):
        lines.append(f"gate:        {'passed' if gate.get('passed') else 'held back'}"
                     f"{': ' + render.display(str(gate.get('reason'))) if gate.get('reason') else ''}")
    return lines


def show_version(session: Session, name: str, as_json: bool) -> None:
    """``trainctl show vNNN``."""
    path, meta = _where(session.layout, name)
    if as_json:
        emit_json({"version": name, "path": str(path), "metadata": meta})
    else:
        click.echo("\n".join(_version_lines(name, path, meta)))


def version_of_item(session: Session, item_id: str) -> str | None:
    """The first version that contains the item (``trainctl show ITEM``)."""
    return versions.containing(versions.models_dir(session.layout), item_id)


@click.command()
@click.argument("version")
@click.option("--requeue", is_flag=True, help="Queue again the items trained after VERSION (copies from done/).")
@click.pass_obj
def rollback(session: Session, version: str, requeue: bool) -> None:
    """Continue training from published VERSION (at the next moment between items).

    Later versions stay on disk. With --requeue, the items the current line trained after
    VERSION are queued again, in their order.
    """
    layout = session.layout
    versions.require(versions.models_dir(layout), version)
    control.send_rollback(layout, version, requeue=requeue)
    when = "between items" if daemon_running(layout) else "when the daemon next starts"
    note(f"rollback to {version} requested: training continues from its weights {when}"
         f"{'; the items trained after it are queued again' if requeue else ''} (trainctl history shows it done)")
