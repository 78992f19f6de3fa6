"""Loading the model and tokenizer: local files only, the right device and dtype, LoRA."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.config import ModelConfig
from trainer.errors import ConfigError
from trainer.train import attention


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device = {name!r}, but no CUDA device is available: use auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def model_dir(base: Path, config: ModelConfig) -> Path:
    path = Path(config.path)
    return path if path.is_absolute() else base / path


def load(base: Path, config: ModelConfig) -> Loaded:
    """The model and tokenizer from ``model.path``, never from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = model_dir(base, config)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path: {path} holds no Hugging Face model (no config.json): point it at a "
                          f"local model directory, or run trainctl init --demo for the tiny demo model")
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    extra = {}
    if config.load_in_4bit:
        extra["quantization_config"] = _four_bit(config, device)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                 attn_implementation=attention.implementation(device.type, config.attention),
                                                 **extra)
    if not config.load_in_4bit:
        model.to(device)
    if config.lora:
        model = _with_lora(model, config)
    model.train()
    return Loaded(model, tokenizer, device, dtype)


def _four_bit(config: ModelConfig, device: torch.device):
    if not config.lora:
        raise ConfigError("model.load_in_4bit needs model.lora = true (QLoRA trains an adapter)")
    if device.type != "cuda":
        raise ConfigError("model.load_in_4bit needs a CUDA device; set it to false on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("model.load_in_4bit needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _with_lora(model, config: ModelConfig):
    from peft import LoraConfig, get_peft_model

    targets = config.lora_targets
    target_modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
