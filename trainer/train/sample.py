"""``python -m trainer.train.sample MODEL_DIR PROMPT...``: what a published model answers.

Loads the directory with plain ``from_pretrained`` (as a user would), answers each prompt
greedily as one chat turn, and prints the answer and whether it ended at the end of the turn
(the tokenizer's chat template ends a turn with a token the generation config lists as an end).
Run by ``make demo`` in a child process: the demo's own process stays light.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def answer(model, tokenizer, prompt: str, max_new_tokens: int = 40) -> tuple[str, bool]:
    """The greedy answer, and whether generation stopped on an end-of-turn token."""
    import torch

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    ends = model.generation_config.eos_token_id
    ends = set(ends if isinstance(ends, list) else [ends])
    stopped = bool(new) and new[-1] in ends
    return tokenizer.decode(new, skip_special_tokens=True).strip(), stopped


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("prompts", nargs="+")
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True).eval()
    for prompt in args.prompts:
        text, stopped = answer(model, tokenizer, prompt)
        print(f"> {prompt}\n{text}\n({'stopped at the end of the turn' if stopped else 'cut at the token limit'})",
              flush=True)


if __name__ == "__main__":
    main()
