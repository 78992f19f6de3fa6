"""Packing examples into fixed-length rows without leakage between them.

Examples are laid end to end in a row of ``row_length`` tokens, in order, never split; an
example that does not fit starts the next row, and the rest of the row is padding. Each
example's position ids restart at 0, which is how transformers recognises packed sequences:
with no 2D attention mask and no cache it builds a block-diagonal causal mask, so no token
attends across an example boundary. Labels already point within each example (the last token
of one example never learns to predict the first of the next), and padding learns nothing.

The packer's state (the partly filled row) is part of the data cursor in a checkpoint, so a
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
    content_length: int = -1  # tokens before padding (-1: the row is not padded)

    def __post_init__(self) -> None:
        if self.content_length < 0:
            self.content_length = len(self.input_ids)

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
                   self.position_ids + list(range(missing)), len(self))

    @property
    def target_count(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


class Packer:
    """Greedy in-order packing; ``state()``/``restore()`` carry a partly filled row."""

    def __init__(self, row_length: int, pad_id: int) -> None:
        self.row_length = row_length
        self.pad_id = pad_id
        self._row = Row()

    def feed(self, example: Example) -> Iterator[Row]:
        """Add one example; yields the row it closed, if any."""
        if len(example.input_ids) > self.row_length:
            raise ValueError(f"example of {len(example.input_ids)} tokens exceeds the row length {self.row_length}")
        if len(self._row) + len(example.input_ids) > self.row_length:
            yield self._row.padded(self.row_length, self.pad_id)
            self._row = Row()
        self._row.add(example)
        if len(self._row) == self.row_length:
            yield self._row
            self._row = Row()

    def flush(self) -> Iterator[Row]:
        if len(self._row):
            yield self._row.padded(self.row_length, self.pad_id)
            self._row = Row()

    def state(self) -> dict:
        return {"input_ids": list(self._row.input_ids), "labels": list(self._row.labels),
                "position_ids": list(self._row.position_ids)}

    def restore(self, state: dict | None) -> None:
        self._row = Row(list(state["input_ids"]), list(state["labels"]), list(state["position_ids"])) if state else Row()


def pack(examples: Iterable[Example], row_length: int, pad_id: int) -> list[Row]:
    packer = Packer(row_length, pad_id)
    rows = [row for example in examples for row in packer.feed(example)]
    return rows + list(packer.flush())
