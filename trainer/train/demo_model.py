"""The embedded default: a tiny Llama-style model and tokenizer, built offline in a second.

A byte-level BPE tokenizer is trained on the sample chat data, wrapped with a chat template
whose ``{% generation %}`` markers let transformers return an exact assistant-token mask,
and a 4-layer, 128-wide Llama (about 1.2M parameters) is initialised from a fixed seed.
Both are saved as an ordinary Hugging Face directory, loaded like any other model.
"""

from __future__ import annotations

import random
from pathlib import Path

from trainer.demo.sample_data import record
from trainer.intake.formats import Chat, normalise

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# One line on purpose: transformers renders templates with trim_blocks, and stray newlines
# between tags would become tokens. Only assistant content (and its end marker) is inside
# {% generation %}, so return_assistant_tokens_mask marks exactly what the model learns to say.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] + '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


def _corpus(lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(lines):
        form = normalise(record(rng))
        if isinstance(form, Chat):
            texts.extend(m["content"] for m in form.messages)
        else:
            texts.extend(piece.text for piece in form.pieces)
    return texts


def build_tokenizer(vocab_size: int = 1024, seed: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_corpus(3000, seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_demo_model(dest: Path, *, hidden: int = 128, layers: int = 4, heads: int = 4,
                     intermediate: int = 512, max_positions: int = 2048, seed: int = 0) -> Path:
    """Write a tiny, randomly initialised causal LM and its tokenizer to ``dest``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer(seed=seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def main(argv: list[str] | None = None) -> None:
    """``python -m trainer.train.demo_model BASE_DIR``: the demo model and sample data.

    Run by ``trainctl init --demo`` in its own process, so that trainctl never imports torch.
    """
    import argparse

    from trainer.demo.sample_data import write_eval_files, write_sample_chat

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("base", type=Path)
    args = parser.parse_args(argv)
    model = args.base / "models" / "base"
    if (model / "config.json").exists():
        print(f"demo model already in {model}")
    else:
        staging = args.base / "models" / ".staging-demo"
        build_demo_model(staging)
        staging.rename(model)  # whole or not at all
        print(f"built the demo model in {model}")
    samples = args.base / "samples"
    samples.mkdir(exist_ok=True)
    for n in range(3):
        write_sample_chat(samples / f"chat-{n}.jsonl", 300, seed=100 + n)
    print(f"sample data in {samples}")
    (args.base / "eval").mkdir(exist_ok=True)
    if write_eval_files(args.base / "eval"):
        print(f"eval set and sample prompts in {args.base / 'eval'}")


if __name__ == "__main__":
    main()
