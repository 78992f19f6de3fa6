"""``trainctl rollback vNNN [--requeue]``, acted on by the daemon between items.

The one step that changes what training continues from is the engine's checkpoint of the
version's weights (``TrainingEngine.continue_from``): checkpoints order by line first, so
until that checkpoint is committed a restart finds the old line whole, and after it the new
one. That checkpoint also carries the request's id and the items to queue again, so what
follows it (queueing the copies, the event, clearing the request) is finished after a crash
from where it stopped, never done twice (``intake.requeue``), and never mixed with the old line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from trainer.config import Config
from trainer.eventkinds import Event
from trainer.intake import requeue
from trainer.spool import control, events, versions
from trainer.spool.layout import Layout
from trainer.timefmt import parse_iso, utc_now
from trainer.train.protocol import TrainingEngine

log = logging.getLogger("trainer.daemon")


def roll_back(layout: Layout, config: Config, engine: TrainingEngine, request: dict,
              until_written: Callable[[Callable[[], object]], object]) -> str | None:
    """Act on a rollback request; returns the version now trained from (None: refused)."""
    version, request_id = request.get("version"), str(request.get("id") or "")
    models = versions.models_dir(layout)
    started = request_id and (engine.state.rollback or {}).get("id") == request_id
    if not started:
        meta = versions.read(models, version) if isinstance(version, str) else None
        if meta is None:
            log.error("rollback refused: %r is not a published version (trainctl versions lists them)", version)
            until_written(lambda: control.clear_rollback(layout))
            return None
        after = (versions.items_after(models, version, engine.state.version, engine.state.lineage)
                 if request.get("requeue") else [])
        log.info("rolling back to %s%s", version, f" and queueing {len(after)} item(s) again" if after else "")
        engine.continue_from(version, meta, request, after)  # the flip: one checkpoint
    done = engine.state.rollback or {}
    to_queue = done.get("requeue") or []
    try:
        at = parse_iso(request.get("at"))
    except (TypeError, ValueError):
        at = utc_now()
    queued, skipped = until_written(lambda: requeue.queue_copies(
        layout, to_queue, request_id=request_id, at=at, version=version, limits=config.spool))
    for why in skipped:
        log.warning("rollback: not queued again: %s", why)
    events.append(layout, Event.ROLLED_BACK, None, version=version, global_step=engine.state.global_step,
                  requeue=bool(request.get("requeue")),
                  from_line=done.get("from_line"), from_version=done.get("from_version"),
                  requeued=[new for new, _ in queued], requeued_from=[old for _, old in queued],
                  not_requeued=skipped)
    until_written(lambda: control.clear_rollback(layout))
    log.info("rolled back to %s: training continues from its weights%s", version,
             f"; {len(queued)} item(s) queued again" if queued else "")
    return version
