"""Lineage: which items trained the weights since the last version, kept in the ``TrainState``.

Kept there, and nowhere else, because the checkpoint is the one record that cannot disagree
with the weights: a kill -9 keeps an item's completion together with the steps that trained
it, or loses both (the item is then trained again from the checkpoint and recorded then).
Pure functions over the state; torch-free.

    item_started    a fresh cursor: where the item's steps start (an item left mid-way
                    before it, skipped or failed, is noted as partial: its steps stay)
    item_completed  the item's entry, appended to ``state.lineage`` before the checkpoint
                    that ends the item
    summary         the "lineage" of a version made now
    published       after a version is published: it is the next one's parent
    rolled_back     the state a rollback to a version starts its new line with
"""

from __future__ import annotations

from pathlib import Path

from trainer.errors import CorruptMeta
from trainer.spool.fsutil import read_regular
from trainer.spool.item import META_LIMIT, META_NAME, parse_meta
from trainer.train.protocol import TrainState


def item_started(state: TrainState, item_id: str, sha256: str, *, resumed_step: int = 0) -> None:
    """Called when a cursor is made for an item (``resumed_step``: steps it already had, when
    a checkpoint from before lineage was recorded resumes it)."""
    start = state.item_start
    if start and start.get("item_id") == item_id and start.get("sha256") == sha256:
        return
    if start and state.global_step >= start.get("first_step", state.global_step + 1):
        state.partial.append({"id": start["item_id"], "sha256": start.get("sha256"),
                              "first_step": start["first_step"], "last_step": state.global_step})
    state.item_start = {"item_id": item_id, "sha256": sha256, "first_step": state.global_step + 1 - resumed_step,
                        "tokens_seen": state.tokens_seen}


def item_facts(data_path: Path) -> dict:
    """Name and record count from the item's meta.json beside its data (None if unreadable)."""
    try:
        meta = parse_meta(read_regular(data_path.parent / META_NAME, META_LIMIT))
    except (OSError, CorruptMeta):
        return {"name": None, "records": None}
    return {"name": meta.name, "records": meta.records}


def item_completed(state: TrainState, item_id: str, sha256: str, facts: dict) -> None:
    start = state.item_start if (state.item_start or {}).get("item_id") == item_id else None
    first = start["first_step"] if start else state.global_step
    tokens = state.tokens_seen - start["tokens_seen"] if start else None
    state.lineage.append({"id": item_id, "name": facts.get("name"), "sha256": sha256,
                          "records": facts.get("records"), "tokens": tokens,
                          "first_step": first, "last_step": state.global_step})
    state.item_start = None


def _in_progress(state: TrainState) -> list[dict]:
    start = state.item_start
    if start and state.cursor and state.global_step >= start.get("first_step", state.global_step + 1):
        return [{"id": start["item_id"], "sha256": start.get("sha256"), "first_step": start["first_step"],
                 "last_step": state.global_step}]
    return []


def summary(state: TrainState, *, base: str, config_hash: str) -> dict:
    """The "lineage" of a version made from the state now. ``partial``: items whose steps are
    in the weights but which were not completed (skipped or failed mid-way)."""
    return {"base": base, "config_hash": config_hash, "line": state.line,
            "steps": [state.version_step + 1, state.global_step],
            "items": [dict(entry) for entry in state.lineage],
            "partial": [dict(entry) for entry in state.partial] + _in_progress(state)}


def parent(state: TrainState, newest_published: str | None) -> str:
    """The version this line last published or was rolled back to; for a checkpoint from
    before lineage was recorded, the newest version on disk; else "base"."""
    return state.version or newest_published or "base"


def published(state: TrainState, name: str) -> None:
    """``name`` now holds the weights: it is the parent of the next version."""
    state.version, state.version_step = name, state.global_step
    state.lineage, state.partial = [], []
    if state.item_start:  # an item left mid-way: its steps so far are in this version
        state.item_start = {**state.item_start, "first_step": state.global_step + 1,
                            "tokens_seen": state.tokens_seen}


def rolled_back(state: TrainState, name: str, meta: dict, *, base: str, request: dict,
                requeue: list[dict]) -> TrainState:
    """A new line that starts from version ``name`` (its metadata ``meta``): its step and
    counters, no item in progress, nothing trained since it. ``request`` and the items to
    queue again travel in the checkpoint, so a crash after it can finish the requeue."""
    return TrainState(global_step=int(meta.get("global_step") or 0), tokens_seen=int(meta.get("tokens_seen") or 0),
                      micro_batch_size=state.micro_batch_size, base=base,
                      items_completed=int(meta.get("items_completed") or 0), line=state.line + 1,
                      version=name, version_step=int(meta.get("global_step") or 0),
                      rollback={"id": request.get("id"), "version": name, "requeue": requeue,
                                "from_line": state.line, "from_version": state.version})
