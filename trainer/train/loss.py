"""The training loss: cross-entropy summed over target tokens.

Summing (not averaging) per micro-batch and dividing once by the optimizer step's total
target count makes a step's gradient independent of how its rows are split into
micro-batches: halving the micro-batch after an out-of-memory error changes nothing but
memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.train.attention import wants_flat_rows
from trainer.train.examples import IGNORE


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy over positions whose label is not IGNORE.

    Labels are already next-token labels (aligned with the logits), so no shift here.
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def forward_packed(model, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Logits for packed rows: no attention mask and no cache, so transformers separates the
    examples by the restarting position ids. For the flash kernels, which do that only in one
    sequence, the rows go in as one and their logits come back as rows (``attention.py``)."""
    if wants_flat_rows(model):
        rows, length = input_ids.shape
        logits = model(input_ids=input_ids.reshape(1, -1), position_ids=position_ids.reshape(1, -1),
                       attention_mask=None, use_cache=False).logits
        return logits.reshape(rows, length, -1)
    return model(input_ids=input_ids, position_ids=position_ids, attention_mask=None,
                 use_cache=False).logits
