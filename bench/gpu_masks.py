"""What attention mask packed rows build, per attention implementation, and whether it is right.

transformers (5.x, ``masking_utils.create_causal_mask``) reads packing from position ids that
restart, when no attention mask is given (the engine's ``forward_packed``), and then:

- sdpa / eager: a dense boolean (B, 1, L, L) block-diagonal mask (``sdpa_mask``), which also
  keeps SDPA off its FlashAttention kernel;
- flex_attention: a BlockMask (blocks outside every example skipped), no dense tensor;
- flash_attention_2/3: no mask at all; varlen kernels with cu_seqlens from the position ids,
  but only for a batch of ONE sequence (``_is_packed_sequence`` requires batch size 1). With
  (B, L) rows, B > 1, the position ids are ignored and every row is one causal sequence: the
  examples of a row attend to each other. Rows must be flattened to (1, B x L) first.

``report`` shows it on the machine at hand: for each implementation available and each layout
it prints what reached the attention layers and how far each example's logits are from the
example run alone, against how far they are with no separation at all.
"""

from __future__ import annotations

import importlib.util

from trainer.train.attention import implementation

FLATTEN = {"engine-flash-flat": "flash_attention_2"}
ATTENTION = {"engine-flash-flat": "flash_attention_2", "engine-flex": "flex_attention"}


def best_attention(cuda: bool) -> str:
    """The best implementation installed here, as the engine chooses it (``trainer/train/attention.py``)."""
    return implementation("cuda" if cuda else "cpu")


def describe(mask) -> str:
    if mask is None:
        return "none"
    if type(mask).__name__ == "BlockMask":
        return "BlockMask (sparse)"
    size = mask.numel() * mask.element_size()
    return f"DENSE {str(mask.dtype).removeprefix('torch.')} {tuple(mask.shape)}, {size / 2**20:.1f} MiB"


def describe_mask(model):
    """Watch the first attention call of ``model``; returns a function that tells what mask it got."""
    seen: list[str] = []

    def hook(module, args, kwargs):
        if not seen:
            seen.append(describe(kwargs.get("attention_mask")))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()
               if type(m).__name__.endswith("Attention")]

    def told() -> str:
        for handle in handles:
            handle.remove()
        return seen[0] if seen else "(no attention call)"

    return told


def patch_engine(kind: str) -> None:
    """In this process only: load the engine's model with another attention implementation,
    and for flash kernels flatten each micro-batch's rows into one sequence."""
    if kind not in ATTENTION:
        return
    import transformers

    from trainer.train import step

    load = transformers.AutoModelForCausalLM.from_pretrained

    def from_pretrained(*args, **kwargs):
        return load(*args, **{**kwargs, "attn_implementation": ATTENTION[kind]})

    transformers.AutoModelForCausalLM.from_pretrained = from_pretrained
    if kind in FLATTEN:
        def forward_flat(model, input_ids, position_ids):
            rows, length = input_ids.shape
            return model(input_ids=input_ids.reshape(1, -1), position_ids=position_ids.reshape(1, -1),
                         attention_mask=None, use_cache=False).logits.view(rows, length, -1)

        step.forward_packed = forward_flat


def _packed(row: int, vocab: int):
    """Two rows of ``row`` tokens, each three examples plus a padding tail (its own positions)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    cuts = [[row // 5, row // 3, row // 4], [row // 2, row // 8, row // 6]]
    rows, positions, spans = [], [], []
    for r, lengths in enumerate(cuts):
        lengths = [*lengths, row - sum(lengths)]
        rows.append(torch.randint(4, vocab, (row,), generator=gen))
        positions.append(torch.cat([torch.arange(n) for n in lengths]))
        start = 0
        for n in lengths:
            spans.append((r, start, n))
            start += n
    return torch.stack(rows), torch.stack(positions), spans


def report(model_dir, row: int, cuda: bool) -> dict[tuple[str, str], tuple[str, bool]]:
    """Print the table; returns {(implementation, "rows" or "flat"): (mask, examples kept apart)}."""
    import torch
    from transformers import AutoModelForCausalLM

    row = min(row, 512)
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    kinds = ["sdpa", "eager", "flex_attention"]
    if cuda and importlib.util.find_spec("flash_attn") is not None:
        kinds.append("flash_attention_2")
    if cuda and importlib.util.find_spec("flash_attn_interface") is not None:
        kinds.append("flash_attention_3")
    print("Packed rows (2 x", row, "tokens, 4 sequences each), what reaches attention and whether examples stay "
          "apart (max |logit difference| against each example alone; 'no separation' = one causal sequence "
          "per row):\n")
    seen: dict[tuple[str, str], tuple[str, bool]] = {}
    print("| attention | layout | mask reaching attention | max diff vs alone | no separation | examples apart |")
    print("|---|---|---|---:|---:|---|")
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(device)
        ids, pos, spans = _packed(row, reference.config.vocab_size)
        ids, pos = ids.to(device), pos.to(device)
        alone = [reference(input_ids=ids[r:r + 1, s:s + n], use_cache=False).logits[0].float() for r, s, n in spans]
        plain = reference(input_ids=ids, use_cache=False).logits.float()
        leak = max((plain[r, s:s + n] - a).abs().max().item() for (r, s, n), a in zip(spans, alone))
        for kind in kinds:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=kind).to(device)
            for layout in ("rows (B, L)", "flat (1, B x L)"):
                flat = layout.startswith("flat")
                told = describe_mask(model)
                x, p = (ids.reshape(1, -1), pos.reshape(1, -1)) if flat else (ids, pos)
                try:
                    logits = model(input_ids=x, position_ids=p, attention_mask=None, use_cache=False).logits
                except Exception as error:  # an implementation this machine cannot run
                    told()
                    print(f"| {kind} | {layout} | - | failed: {type(error).__name__} | | |")
                    continue
                logits = logits.float().view(ids.shape[0], row, -1)
                diff = max((logits[r, s:s + n] - a).abs().max().item() for (r, s, n), a in zip(spans, alone))
                apart, mask = diff < 0.1 * leak, told()
                seen[kind, "flat" if flat else "rows"] = (mask, apart)
                verdict = "yes" if apart else "**NO: examples attend to each other**"
                print(f"| {kind} | {layout} | {mask} | {diff:.2e} | {leak:.2e} | {verdict} |")
    print()
    return seen


# What each contender runs: (attention implementation, layout); hf-flatten's is best_attention's.
USES = {"engine": ("sdpa", "rows"), "engine-fsdp": ("sdpa", "rows"), "engine-flex": ("flex_attention", "rows"),
        "engine-flash-flat": ("flash_attention_2", "flat")}


def check(seen: dict[tuple[str, str], tuple[str, bool]], kinds: list[str], cuda: bool) -> None:
    """Every contender must keep examples apart (else its figures are of a wrong model); say
    plainly when the engine as shipped hands attention a dense mask."""
    uses = {**USES, "hf-flatten": (best_attention(cuda), "flat")}
    for kind in kinds:
        mask, apart = seen.get(uses[kind], ("not checked", True))
        if not apart:
            raise SystemExit(f"{kind}: {uses[kind][0]} on {uses[kind][1]} lets examples attend to each other")
        if kind == "engine" and mask.startswith("DENSE"):
            print(f"engine as shipped: packed rows hand attention a {mask} mask per forward "
                  f"({'on the GPU' if cuda else 'here'}); see docs/performance.md\n")
