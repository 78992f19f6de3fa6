"""The attention kernel packed rows run on, and the row layout it needs.

Packed rows carry no attention mask: transformers reads where each example starts from the
position ids that restart (``masking_utils.find_packed_sequence_indices``). What it builds
from them depends on the implementation (``bench/gpu_masks.py`` shows it on the machine at hand):

- sdpa: a dense boolean (rows, 1, L, L) block-diagonal mask. Right, and the CPU's choice
  (FlexAttention has no backward there, the flash kernels need CUDA); on a GPU it costs
  rows x L x L bytes a layer call and keeps SDPA off its FlashAttention kernel;
- flex_attention: a sparse BlockMask (the blocks outside every example are skipped);
- flash_attention_2 / 3: varlen kernels with cu_seqlens, no mask at all, but only for a batch
  of ONE sequence: with several rows the position ids are ignored and the examples of a row
  would attend to each other. So for these the engine flattens a micro-batch's rows into one
  sequence (``loss.forward_packed``).

On CUDA the engine takes the best one installed (flash_attention_3, flash_attention_2, then
flex_attention): packed rows never build a dense mask on a GPU. ``model.attention`` in the
config overrides the choice.
"""

from __future__ import annotations

import importlib.util

FLAT_ROWS = frozenset({"flash_attention_2", "flash_attention_3"})  # need one sequence, not rows


def implementation(device_type: str, configured: str = "auto") -> str:
    """The ``attn_implementation`` to load the model with."""
    if configured != "auto":
        return configured
    if device_type != "cuda":
        return "sdpa"
    if importlib.util.find_spec("flash_attn_interface") is not None:
        return "flash_attention_3"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "flex_attention"


def wants_flat_rows(model) -> bool:
    """Whether ``model`` runs a kernel that separates packed examples only in one sequence."""
    return getattr(model.config, "_attn_implementation", None) in FLAT_ROWS
