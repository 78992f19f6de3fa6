"""An item's metadata (``meta.json`` beside its ``data.jsonl``) and how it is read back.

Metadata is replaced whole by an atomic rename, never edited in place. A ``meta.json`` that
cannot be read (a disk fault, a hand edit) never crashes a reader: the item is still listed,
with the reason, and can still be held, retried or removed.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from trainer.errors import CorruptMeta
from trainer.spool.fsutil import read_regular
from trainer.states import ItemState, Priority
from trainer.timefmt import parse_iso

META_SCHEMA = 1
DATA_NAME = "data.jsonl"
META_NAME = "meta.json"
META_LIMIT = 16 << 20  # far above any real one (its error history is capped by max_attempts)


# Control characters and bidi overrides in a file name: a newline would split a listing or a
# log line in two, an ESC sequence would drive the reader's terminal, and U+202E would show
# "gnp.jsonl" reversed. Any user may name a file in the inbox, so names are shown escaped.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def display_name(name: str) -> str:
    """A file name as text that can always be stored and printed on one line: bytes that are
    not UTF-8 (kept by Python as surrogates), control characters and bidi overrides are shown
    as \\xNN or \\uNNNN escapes."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _UNPRINTABLE.sub(_escape, text)


@dataclass(frozen=True, kw_only=True)
class ItemError:
    """One failure of an item: when, how, and what the person can do about it."""

    at: str
    message: str
    kind: str  # "invalid" | "transient" | "permanent" | "skipped"
    attempt: int = 0


@dataclass(frozen=True, kw_only=True)
class ItemMeta:
    id: str
    name: str  # the file's original name, for people
    source: str  # "enqueue" | "inbox"
    sha256: str
    size: int
    records: int
    enqueued_at: str
    priority: Priority
    attempts: int = 0  # interrupted or failed training runs so far
    errors: tuple[ItemError, ...] = ()
    not_before: str | None = None  # a retry waits until then (UTC ISO time)
    # Token statistics from the engine's survey (count, mean, p95, max, truncated, ...).
    tokens: dict[str, Any] | None = None
    # Its held-out share's evaluation at its end (eval_loss, eval_perplexity, ...).
    eval: dict[str, Any] | None = None
    # The record format(s) the validator found ("sharegpt"; several only for a file mixing
    # messages, text and prompt/completion); empty for items queued before formats were kept.
    formats: tuple[str, ...] = ()
    # Records whose line was already in a file queued earlier / that repeat a line of this
    # file (trainer.intake.seen); None: not counted (queued before the count existed).
    repeated_records: int | None = None
    repeated_in_file: int | None = None
    schema: int = META_SCHEMA

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2) + b"\n"

    def with_error(self, error: ItemError) -> "ItemMeta":
        return dataclasses.replace(self, errors=(*self.errors, error))

    @property
    def last_error(self) -> ItemError | None:
        return self.errors[-1] if self.errors else None


_REQUIRED = {
    "id": str, "name": str, "source": str, "sha256": str, "size": int, "records": int,
    "enqueued_at": str, "priority": str, "attempts": int,
}


def parse_meta(raw: bytes) -> ItemMeta:
    """Parse meta.json bytes; raise ``CorruptMeta`` saying what is wrong."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptMeta(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptMeta("not a JSON object")
    if data.get("schema") != META_SCHEMA:
        raise CorruptMeta(f"unknown metadata schema {data.get('schema')!r}")
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise CorruptMeta(f"field {key!r} missing or not a {kind.__name__}")
    try:
        priority = Priority(data["priority"])
        errors = tuple(
            ItemError(at=str(e["at"]), message=str(e["message"]), kind=str(e["kind"]),
                      attempt=int(e.get("attempt", 0)))
            for e in data.get("errors") or ()
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptMeta(f"bad priority or errors ({exc})") from None
    # A "cursor" key (written by format 1 before the engine kept its place in its checkpoints)
    # is ignored.
    not_before = data.get("not_before")
    tokens = data.get("tokens")
    if tokens is not None and not isinstance(tokens, dict):
        raise CorruptMeta("field 'tokens' is not an object")
    evaluation = data.get("eval") if isinstance(data.get("eval"), dict) else None
    if not_before is not None:
        try:
            parse_iso(not_before)
        except (TypeError, ValueError):
            raise CorruptMeta(f"field 'not_before' is not a time: {not_before!r}") from None
    formats = data.get("formats") or []
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise CorruptMeta("field 'formats' is not a list of names")
    repeats = {key: data.get(key) for key in ("repeated_records", "repeated_in_file")}
    for key, value in repeats.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise CorruptMeta(f"field {key!r} is not a number")
    return ItemMeta(
        id=data["id"], name=data["name"], source=data["source"], sha256=data["sha256"],
        size=data["size"], records=data["records"], enqueued_at=data["enqueued_at"],
        priority=priority, attempts=data["attempts"], errors=errors,
        not_before=not_before, tokens=tokens, eval=evaluation, formats=tuple(formats), **repeats,
    )


@dataclass(frozen=True)
class Item:
    """An item as found on disk: where it is, and its metadata if it could be read."""

    id: str
    state: ItemState
    priority: Priority | None  # from the directory when pending, else from the metadata
    path: Path
    meta: ItemMeta | None = None
    meta_problem: str | None = field(default=None, compare=False)

    @property
    def data_path(self) -> Path:
        return self.path / DATA_NAME

    @property
    def meta_path(self) -> Path:
        return self.path / META_NAME


def _read_regular(path: Path) -> bytes:
    """meta.json, read without following a symlink or waiting on a fifo put in its place."""
    try:
        return read_regular(path, META_LIMIT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EFBIG):
            raise CorruptMeta(f"meta.json is {exc.strerror}") from None
        raise


def load_item(path: Path | str, state: ItemState, priority: Priority | None) -> Item:
    """Read an item directory; an unreadable meta.json becomes ``meta_problem``, not an error."""
    path = Path(path)
    item_id = path.name
    if os.path.islink(path):
        # Not ours: a symlink put in a state dir by hand. Following it would read (and, on the
        # next state change, write meta.json) outside the base dir; it is listed with the
        # reason instead, and fails when claimed without anything behind it being touched.
        return Item(item_id, state, priority, path, None,
                    "a symlink, not an item directory (never followed): remove it")
    try:
        meta = parse_meta(_read_regular(path / META_NAME))
    except FileNotFoundError:
        if not path.is_dir():
            raise
        return Item(item_id, state, priority, path, None, "meta.json is missing")
    except PermissionError:
        return Item(item_id, state, priority, path, None, f"{path / META_NAME}: permission denied")
    except (CorruptMeta, OSError) as exc:
        return Item(item_id, state, priority, path, None, f"meta.json unreadable: {exc}")
    if meta.id != item_id:
        return Item(item_id, state, priority, path, None, f"meta.json names another id {meta.id!r}")
    return Item(item_id, state, priority if priority is not None else meta.priority, path, meta)
