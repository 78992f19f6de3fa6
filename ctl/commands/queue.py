"""The queue: ``enqueue``, ``list``, ``show``, ``hold``, ``release``, ``retry``, ``remove``, ``move``."""

from __future__ import annotations

from pathlib import Path

import click

from ctl import render
from ctl.commands import versions as version_views
from ctl.session import (
    PRIORITIES,
    Session,
    complete_item_id,
    emit_json,
    finish,
    item_id_arg,
    note,
)
from trainer.exitcodes import ExitCode
from trainer.spool import control, events, queue
from trainer.states import ItemState, Priority


def _queued_summary(meta) -> str:
    """"sharegpt, 1,234 records, 12 seen in earlier files, 2.1 MB": what enqueue found."""
    parts = ["+".join(meta.formats)] if meta.formats else []
    parts.append(f"{meta.records:,} records")
    if meta.repeated_records:
        parts.append(f"{meta.repeated_records:,} seen in earlier files")
    if meta.repeated_in_file:
        parts.append(f"{meta.repeated_in_file:,} repeated within it")
    parts.append(render.size(meta.size))
    return ", ".join(parts)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=True))
@click.option("--priority", "-p", type=PRIORITIES, default="normal", show_default=True)
@click.option("--hold", is_flag=True, help="Queue it held: it waits until trainctl release ID.")
@click.option("--move", is_flag=True, help="Delete each file once it is safely queued.")
@click.option("--reject-duplicates", is_flag=True,
              help="Refuse (exit 65, nothing queued) a file whose content is already queued, active or done.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and warnings.")
@click.option("--json", "as_json", is_flag=True, help="Print the queued items as JSON instead of their ids.")
@click.pass_obj
def enqueue(session: Session, files: tuple[Path, ...], priority: str, hold: bool, move: bool,
            reject_duplicates: bool, quiet: bool, as_json: bool) -> None:
    """Validate FILES and queue copies of them; prints one id per file.

    Either every file is queued or, if any is invalid, none is (exit 65, every problem listed).
    A file with the same content as a queued, active or done item is queued with a warning
    (refused with --reject-duplicates).
    """
    from trainer.intake import (
        enqueue,  # here, not at the top: only enqueue pays for the validator
    )

    layout = session.layout
    queued = enqueue.enqueue_batch(layout, list(files), limits=session.config.spool,
                                  priority=Priority(priority), hold=hold, reject_duplicates=reject_duplicates)
    for item in queued:
        meta = item.meta
        if not quiet and not as_json:
            click.echo(meta.id)
            note(f"queued {meta.name} as {meta.id} ({_queued_summary(meta)}, "
                 f"{'held' if hold else priority})")
        if item.duplicates:
            note(f"warning: {enqueue.duplicate_line(meta.name, list(item.duplicates))}: queued anyway "
                 f"(--reject-duplicates refuses such files)")
        if move:
            kept = enqueue.delete_source(item)
            if kept:
                note(f"kept {item.source} although --move was given: {kept}")
    if queued and queued[0].index_warning:
        note(f"warning: {queued[0].index_warning}")
    if as_json:
        emit_json({"items": [{"id": item.meta.id, "name": item.meta.name, "records": item.meta.records,
                              "size": item.meta.size, "sha256": item.meta.sha256,
                              "state": "held" if hold else "pending", "priority": priority} for item in queued]})
    if not quiet and control.read_requests(layout).pause is not None:
        note("the queue is paused: nothing trains until trainctl resume")


@click.command(name="list")
@click.option("--all", "which", flag_value="all", help="Every item, done and failed included.")
@click.option("--failed", "which", flag_value="failed")
@click.option("--held", "which", flag_value="held")
@click.option("--done", "which", flag_value="done")
@click.option("-v", "--verbose", "full_ids", is_flag=True, help="Full ids instead of short ones.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(session: Session, which: str | None, full_ids: bool, as_json: bool) -> None:
    """The queue: active, then pending in service order (default), or another state.

    The ID column is the shortest prefix of each id's random part that names it alone: any
    command taking an ITEM_ID takes it."""
    from ctl import itemview, style
    from trainer.spool.names import all_ids, short_forms
    from trainer.timefmt import utc_now

    states = {
        None: [ItemState.ACTIVE, ItemState.PENDING],
        "all": list(ItemState),
        "failed": [ItemState.FAILED],
        "held": [ItemState.HELD],
        "done": [ItemState.DONE],
    }[which]
    items = queue.list_items(session.layout, states)
    if which is None:  # the active item first, then what comes next
        items.sort(key=lambda item: item.state is not ItemState.ACTIVE)
    if as_json:
        shorts = short_forms(all_ids(session.layout))
        emit_json({"items": [{**render.item_dict(item), "short_id": shorts.get(item.id)} for item in items]})
    elif items:
        click.echo("\n".join(itemview.list_lines(session.layout, items, now=utc_now(), colour=style.wanted(),
                                                 full_ids=full_ids)))
    else:
        note(f"no {which or 'pending or active'} items")


@click.command()
@click.argument("item_id", metavar="ID|VERSION", callback=version_views.item_or_version_arg,
                shell_complete=complete_item_id)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(session: Session, item_id: str, as_json: bool) -> None:
    """Everything about one item: its data, training (time, final loss, tokens, evaluations),
    the metrics file, every error, its events and the first version that contains it; or about
    one version (vNNN: lineage, eval, paths)."""
    if version_views.is_version(item_id):
        return version_views.show_version(session, item_id, as_json)
    from ctl import itemview, style
    from trainer.spool import metrics
    from trainer.spool.names import all_ids, short_forms
    from trainer.timefmt import utc_now

    layout = session.layout
    item = render.item_dict(queue.find(layout, item_id))
    history = events.read(layout, item_id=item_id).events
    in_version = version_views.version_of_item(session, item_id)
    now = utc_now()
    tail = itemview.metrics_tail(layout, item_id)
    trained = itemview.trained_seconds(history, now).get(item_id)
    metrics_path = str(metrics.path(layout, item_id))
    if as_json:
        evals = tail["evals"]
        emit_json({"item": item, "events": history, "in_version": in_version,
                   "training": {"seconds": trained, "final_loss": itemview.final_loss(tail["last"]),
                                "last_step": tail["last"], "evals": evals, "metrics_path": metrics_path}})
        return
    short = short_forms(all_ids(layout)).get(item_id, item_id)
    click.echo("\n".join(itemview.block(item, history, short=short, tail=tail, trained=trained,
                                        metrics_path=metrics_path, now=now, colour=style.wanted())))
    if item.get("state") == "done":
        click.echo(f"in version: {in_version or 'none yet (trained, not yet in a published version)'}")


@click.command()
@click.argument("item_id", callback=item_id_arg, shell_complete=complete_item_id)
@click.pass_obj
def hold(session: Session, item_id: str) -> None:
    """Keep a pending item out of training until release."""
    queue.hold(session.layout, item_id)
    note(f"{item_id} held")


@click.command()
@click.argument("item_id", callback=item_id_arg, shell_complete=complete_item_id)
@click.pass_obj
def release(session: Session, item_id: str) -> None:
    """Put a held item back in its queue."""
    item = queue.release(session.layout, item_id)
    note(f"{item_id} released to the {item.priority.value if item.priority else 'normal'} queue")


@click.command()
@click.argument("item_id", required=False, callback=item_id_arg, shell_complete=complete_item_id)
@click.option("--all-failed", is_flag=True, help="Retry every failed item.")
@click.pass_obj
def retry(session: Session, item_id: str | None, all_failed: bool) -> None:
    """Send a failed item back to its queue with its attempts reset, once its data validates."""
    if (item_id is None) == (not all_failed):
        raise click.UsageError("give an ITEM_ID or --all-failed (not both)")
    from trainer.intake import enqueue  # retry validates the data again

    if all_failed:
        retried, left = enqueue.retry_all_failed(session.layout, session.config.spool)
        for rid in retried:
            click.echo(rid)
        note(f"{len(retried)} failed item{'s' if len(retried) != 1 else ''} queued again")
        for line in left:
            note(line)
        if left:
            finish(ExitCode.DATA_INVALID)
        return
    enqueue.retry(session.layout, item_id, session.config.spool)
    note(f"{item_id} queued again (attempts reset)")


@click.command()
@click.argument("item_id", callback=item_id_arg, shell_complete=complete_item_id)
@click.pass_obj
def remove(session: Session, item_id: str) -> None:
    """Delete an item and its queued copy of the data (not the active item)."""
    queue.remove(session.layout, item_id)
    note(f"{item_id} removed")


@click.command(name="move")
@click.argument("item_id", callback=item_id_arg, shell_complete=complete_item_id)
@click.option("--priority", "-p", type=PRIORITIES, required=True)
@click.pass_obj
def move_(session: Session, item_id: str, priority: str) -> None:
    """Change a pending or held item's priority (it keeps its place by age)."""
    queue.move(session.layout, item_id, Priority(priority))
    note(f"{item_id} moved to {priority}")
