"""Evaluation: eval loss, perplexity and token accuracy on target tokens, and sample outputs.

Records are encoded exactly as for training (``examples.RecordEncoder``: loss only where
the model would learn) and packed the same way (``packing.pack``: no attention across
examples), then scored with no gradient in fixed batches of ``train.micro_batch_size`` rows,
in file order: the same weights give bitwise the same numbers on CPU, after any restart. At
most ``[eval] max_tokens`` tokens per set are scored (the first records, in a fixed order).

    python -m trainer.train.evaluate BASE [VERSION ...]

evaluates versions (``vNNN``, a held-back candidate, or ``base``; default: the newest) on
every eval set and prints one JSON object per version: what ``trainctl eval`` runs, in its
own process, so that trainctl never imports torch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.train.examples import IGNORE, Example, RecordEncoder
from trainer.train.loss import forward_packed
from trainer.train.packing import pack


@dataclass(frozen=True)
class Scorer:
    """How a set is scored: the encoding, the rows and the cap, shared by every model scored."""

    encoder: RecordEncoder
    row_length: int
    pad_id: int
    batch_rows: int
    max_tokens: int

    def examples(self, records: list[dict]) -> tuple[list[Example], int]:
        """The examples scored (in order, until max_tokens) and how many records they are."""
        chosen, tokens = [], 0
        for record in records:
            example, _ = self.encoder.encode(record)
            if example is None or example.target_count == 0:
                continue
            if chosen and tokens + len(example.input_ids) > self.max_tokens:
                break
            chosen.append(example)
            tokens += len(example.input_ids)
        return chosen, len(chosen)

    def score(self, model, device: torch.device, records: list[dict]) -> dict | None:
        """{"loss", "perplexity", "token_accuracy", "tokens", "records"}; None: nothing to score."""
        examples, count = self.examples(records)
        if not examples:
            return None
        rows = pack(examples, self.row_length, self.pad_id)
        loss_sum, correct, targets = 0.0, 0, 0
        was_training = model.training
        model.eval()  # no dropout: the numbers depend on the weights alone
        try:
            with torch.no_grad():
                for start in range(0, len(rows), self.batch_rows):
                    chunk = rows[start:start + self.batch_rows]
                    ids = torch.tensor([r.input_ids for r in chunk], device=device)
                    positions = torch.tensor([r.position_ids for r in chunk], device=device)
                    labels = torch.tensor([r.labels for r in chunk], device=device)
                    logits = forward_packed(model, ids, positions).float()
                    mask = labels != IGNORE
                    losses = torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                        reduction="none")
                    # float64 sums in a fixed order: the same batches give the same total.
                    loss_sum += float(losses.double().sum())
                    correct += int(((logits.argmax(-1) == labels) & mask).sum())
                    targets += int(mask.sum())
        finally:
            model.train(was_training)
        loss = loss_sum / targets
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "token_accuracy": correct / targets,
                "tokens": targets, "records": count}


def prompt_ids(tokenizer, prompt: dict) -> list[int]:
    if isinstance(prompt.get("messages"), list):
        rendered = tokenizer.apply_chat_template(prompt["messages"], tokenize=True, return_dict=True,
                                                 add_generation_prompt=True)
        return list(rendered["input_ids"])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(prompt["prompt"], add_special_tokens=False)["input_ids"]


def prompt_text(prompt: dict) -> str:
    if isinstance(prompt.get("messages"), list):
        last = prompt["messages"][-1] if prompt["messages"] else {}
        return str(last.get("content", "")) if isinstance(last, dict) else ""
    return prompt["prompt"]


def samples(model, tokenizer, device: torch.device, prompts: list[dict], max_new_tokens: int) -> list[dict]:
    """Each prompt answered greedily (one at a time: no padding to get wrong)."""
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for prompt in prompts:
                ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=device)
                # synced_gpus: transformers would have a sharded model's ranks generate in step;
                # here they only mirror each of the leader's forward passes (sharding.mirror).
                generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                           synced_gpus=False)
                text = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
                out.append({"prompt": prompt_text(prompt), "output": text})
    finally:
        model.train(was_training)
    return out


def load_dir(directory: Path, dtype: torch.dtype, device: torch.device):
    """A published model directory (a version, a candidate, the base) for scoring only."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    import orjson

    from trainer.config import load_config
    from trainer.errors import UnknownVersion
    from trainer.exitcodes import ExitCode
    from trainer.spool.layout import open_base
    from trainer.train import release_eval

    parser = argparse.ArgumentParser(prog="python -m trainer.train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("versions", nargs="*")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    layout = open_base(args.base)
    config = load_config(layout.config_file)
    try:
        results = release_eval.on_demand(layout.root, config, args.versions)
    except UnknownVersion as exc:
        print(f"trainctl: {exc}", file=sys.stderr)
        return ExitCode.NO_SUCH_ITEM
    for result in results:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
