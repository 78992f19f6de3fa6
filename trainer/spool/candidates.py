"""Versions the regression gate held back, and what a person decides about them. Torch-free.

    models/vNNN/                 published versions (models/LATEST names the newest)
    models/.candidates/vNNN/     held back by the gate: a complete version directory whose
                                 trainer_version.json says why ("eval": {"gate": {...}})

A candidate takes the next version number like any version (numbers are never reused), so
``promote`` is one rename into ``models/`` (same filesystem: atomic; a crash leaves it in one
place or the other, never half) followed by ``LATEST``, replaced atomically. ``discard``
removes it the way retention removes anything (renamed to ``.deleting-NAME`` first).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import orjson

from trainer.errors import GateRefused, UnknownVersion, WrongState
from trainer.eventkinds import Event
from trainer.spool import events
from trainer.spool.fsutil import fsync_dir, read_regular, remove_dirs, write_atomic
from trainer.spool.layout import Layout

CANDIDATES = ".candidates"
VERSION_FILE = "trainer_version.json"
_VERSION = re.compile(r"v(\d{3,})")


def is_version_name(name: str) -> bool:
    return _VERSION.fullmatch(name) is not None


def _versions_in(directory: Path) -> list[str]:
    try:
        return sorted((n for n in os.listdir(directory) if is_version_name(n)), key=lambda n: int(n[1:]))
    except (FileNotFoundError, NotADirectoryError):
        return []


def next_version(models: Path) -> str:
    """The next number after every version published or held back (never one used before)."""
    used = _versions_in(models) + _versions_in(models / CANDIDATES)
    return f"v{max((int(n[1:]) for n in used), default=0) + 1:03d}"


def latest(models: Path) -> str | None:
    """The version ``models/LATEST`` names, if it names one that exists."""
    try:
        name = (models / "LATEST").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if is_version_name(name) and (models / name).is_dir() else None


@dataclass(frozen=True)
class Candidate:
    name: str
    path: Path
    metadata: dict

    @property
    def gate(self) -> dict:
        return ((self.metadata.get("eval") or {}).get("gate")) or {}


def _read(path: Path) -> dict:
    try:
        data = orjson.loads(read_regular(path / VERSION_FILE, 1 << 24))
        return data if isinstance(data, dict) else {}
    except (OSError, orjson.JSONDecodeError):
        return {}


def held_back(models: Path) -> list[Candidate]:
    """The candidates waiting for a decision, oldest first."""
    root = models / CANDIDATES
    return [Candidate(n, root / n, _read(root / n)) for n in _versions_in(root)]


def find(models: Path, name: str) -> Candidate:
    path = models / CANDIDATES / name
    if not is_version_name(name) or not path.is_dir():
        raise UnknownVersion(f"{name}: no held-back candidate by that name (trainctl status lists them)")
    return Candidate(name, path, _read(path))


def still_fails(candidate: Candidate, tolerance: float, current: str | None) -> str | None:
    """Why promoting without --force is refused, or None. Decided again with today's tolerance
    on the recorded numbers (``gate.decide`` is torch-free); and refused if the version it was
    compared with is no longer the current one (promoting it would replace a newer version)."""
    from trainer.gate import decide

    recorded = (candidate.metadata.get("eval") or {})
    gate = recorded.get("gate") or {}
    compared = gate.get("compared_with")
    if compared not in (None, "base") and current is not None and current != compared:
        return f"it was compared with {compared}, but the current version is now {current}"
    references = gate.get("references") or {}
    verdict = decide(recorded.get("sets") or {}, references, tolerance)
    return verdict.reason


def promote(layout: Layout, name: str, *, tolerance: float, force: bool) -> str | None:
    """Publish a held-back candidate as a version; returns the version LATEST named before."""
    models = layout.root / "models"
    candidate = find(models, name)
    current = latest(models)
    why = still_fails(candidate, tolerance, current)
    if why is not None and not force:
        raise GateRefused(f"{name} still fails the gate: {why}; trainctl promote --force {name} publishes it anyway")
    if os.path.lexists(models / name):  # a rename onto an empty directory would replace it silently
        raise WrongState(f"models/{name} already exists: discard the candidate or move that directory away")
    os.rename(candidate.path, models / name)  # one rename: in .candidates/ or in models/, never half
    fsync_dir(models / CANDIDATES)
    fsync_dir(models)
    write_atomic(models, models / "LATEST", (name + "\n").encode())
    events.append(layout, Event.PROMOTED, None, version=name, previous=current, forced=bool(why and force),
                  gate_reason=candidate.gate.get("reason"))
    return current


def discard(layout: Layout, name: str) -> None:
    models = layout.root / "models"
    candidate = find(models, name)
    remove_dirs(models / CANDIDATES, [candidate.name])
    events.append(layout, Event.DISCARDED, None, version=name, gate_reason=candidate.gate.get("reason"))
