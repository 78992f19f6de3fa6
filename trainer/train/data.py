"""An item's data as a resumable stream of packed rows.

The cursor records how many records have been read, the packer's partly filled row and any
rows formed but not yet trained on; restoring it yields exactly the rows an uninterrupted
run would have produced next. Records are re-read from the (immutable) queued copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from trainer.train.evalsets import is_held_out, record_key
from trainer.train.examples import Example, RecordEncoder, TokenStats
from trainer.train.packing import Packer, Row


def records(path: Path, skip: int = 0) -> Iterator[dict]:
    """The file's records in order (blank lines and a leading BOM are not records)."""
    seen = 0
    with open(path, "rb") as fh:
        for number, line in enumerate(fh):
            if number == 0 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            seen += 1
            if seen <= skip:
                continue
            yield orjson.loads(line)


@dataclass
class Cursor:
    """Where training stands within an item (saved in every checkpoint)."""

    item_id: str
    sha256: str
    epoch: int = 0
    records_done: int = 0
    packer: dict | None = None
    pending_rows: list[dict] = field(default_factory=list)
    item_step: int = 0  # optimizer steps taken on this item
    # The survey's results, so a resumed item need not be surveyed (tokenized) again.
    rows_per_epoch: int = 0
    total_steps: int = 0
    # The held-out share the item started with ([eval] holdout_fraction then): a resumed item
    # keeps it whatever the config says now, so it trains on exactly the same records.
    # Checkpoints from before evaluation existed have none: 0, nothing held out.
    holdout: float = 0.0

    def to_json(self) -> dict:
        return {"item_id": self.item_id, "sha256": self.sha256, "epoch": self.epoch,
                "records_done": self.records_done, "packer": self.packer,
                "pending_rows": self.pending_rows, "item_step": self.item_step,
                "rows_per_epoch": self.rows_per_epoch, "total_steps": self.total_steps,
                "holdout": self.holdout}

    @classmethod
    def from_json(cls, data: dict) -> "Cursor":
        return cls(**data)


_END = object()


def _row_json(row: Row) -> dict:
    return {"input_ids": row.input_ids, "labels": row.labels, "position_ids": row.position_ids,
            "padding": row.padding}


class RowStream:
    """Rows of one epoch from the cursor on; ``cursor`` stays current as rows are taken.

    ``examples``: the item's records already encoded (by ``survey``), one entry per record
    (None: rejected or held out); then the file is not read or tokenized again. A held-out
    record still counts in ``records_done``: the cursor counts lines read, not rows trained.
    """

    def __init__(self, path: Path, encoder: RecordEncoder, cursor: Cursor, row_length: int, pad_id: int,
                 examples: list[Example | None] | None = None) -> None:
        self.path = path
        self.encoder = encoder
        self.cursor = cursor
        self.packer = Packer(row_length, pad_id)
        self.packer.restore(cursor.packer)
        self._pending = [Row(r["input_ids"], r["labels"], r["position_ids"], r["padding"])
                         for r in cursor.pending_rows]
        if examples is not None:
            self._encoded = iter(examples[cursor.records_done:])
        else:
            self._encoded = (None if is_held_out(record_key(record), cursor.holdout) else encoder.encode(record)[0]
                             for record in records(path, skip=cursor.records_done))
        self._exhausted = False

    def _fill(self) -> bool:
        """Read records until a row is ready; False at the end of the epoch."""
        while not self._pending:
            if self._exhausted:
                return False
            example = next(self._encoded, _END)
            if example is _END:
                self._exhausted = True
                self._pending.extend(self.packer.flush())
                continue
            self.cursor.records_done += 1
            if example is not None:
                self._pending.extend(self.packer.feed(example))
        return True

    def take(self, count: int) -> list[Row]:
        """Up to ``count`` rows (fewer only at the end of the epoch)."""
        rows = []
        while len(rows) < count and self._fill():
            rows.append(self._pending.pop(0))
        self.cursor.packer = self.packer.state()
        self.cursor.pending_rows = [_row_json(r) for r in self._pending]
        return rows


CACHE_TOKENS = 16_000_000
TICK_RECORDS = 256  # a few milliseconds of tokenizing between two calls of survey's tick
"""Items up to this many tokens keep their encoded examples in memory from the survey to the
training pass (tokenizing is ~10% of a small model's step time); larger ones are re-read."""


@dataclass
class HeldOut:
    """What the survey kept out of training: the held-out records, and the training records
    that a named eval set also holds (reported: the eval leaves them out, see evaluate.py)."""

    records: int = 0
    in_eval_sets: int = 0


def survey(path: Path, encoder: RecordEncoder, row_length: int, pad_id: int,
           cache_tokens: int = CACHE_TOKENS, *, holdout: float = 0.0,
           eval_keys: frozenset[bytes] = frozenset(), held: HeldOut | None = None,
           tick: Callable[[], None] = lambda: None) -> tuple[TokenStats, int, list[Example | None] | None]:
    """One pass over the item's training share: token statistics, rows per epoch, and (when
    small enough) the encoded examples for ``RowStream`` (None for a held-out record).
    ``tick`` is called every ``TICK_RECORDS`` records (a large file takes minutes)."""
    stats = TokenStats()
    held = held if held is not None else HeldOut()
    packer = Packer(row_length, pad_id)
    rows = 0
    cache: list[Example | None] | None = []
    cached_tokens = 0
    for count, record in enumerate(records(path)):
        if count % TICK_RECORDS == 0:
            tick()
        key = record_key(record)
        if is_held_out(key, holdout):
            held.records += 1
            if cache is not None:
                cache.append(None)
            continue
        held.in_eval_sets += key in eval_keys
        example, truncated = encoder.encode(record)
        stats.add(example, truncated=truncated)
        if cache is not None:
            cache.append(example)
            cached_tokens += len(example.input_ids) if example is not None else 0
            if cached_tokens > cache_tokens:
                cache = None
        if example is not None:
            rows += sum(1 for _ in packer.feed(example))
    rows += sum(1 for _ in packer.flush())
    return stats, rows, cache
