"""GPU throughput and MFU of the engine against the HF Trainer, on a Qwen2-0.5B-shaped model.

    .venv/bin/python bench/bench_gpu.py                 # on a CUDA machine (one prepared run)
    .venv/bin/python bench/bench_gpu.py --smoke         # the same code path, tiny, on the CPU

The model has Qwen2-0.5B's shape (24 layers, hidden 896, 14 heads / 2 KV heads,
intermediate 4864, vocab 151,936), randomly initialised: no download. bf16, SDPA, rows of
--row tokens, --batch sequences per step, AdamW (fused on CUDA). Each contender runs in its
own process, alternating, median of --runs; model loading excluded.

MFU = 6 x parameters x real tokens/s / peak (989 TFLOP/s: H100/H200 dense bf16).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PEAK_FLOPS = 989e12
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1024, max_position_embeddings=1024, tie_word_embeddings=True)


def build(dest: Path, shape: dict) -> int:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.train.demo_model import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return sum(p.numel() for p in model.parameters())


def make_data(path: Path, records: int, row: int) -> Path:
    """Chat records whose lengths spread from a few tokens to most of a row."""
    import orjson

    from trainer.demo.sample_data import WORDS, record

    rng = random.Random(0)
    with open(path, "wb") as fh:
        for _ in range(records):
            rec = record(rng)
            if rng.random() < 0.5:
                n = min(int(rng.lognormvariate(4.5, 0.8)), row // 2)
                rec = {"messages": [{"role": "user", "content": "Tell me a story."},
                                    {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=max(n, 3)))}]}
            fh.write(orjson.dumps(rec) + b"\n")
    return path


def worker(kind: str, model_dir: Path, data: Path, row: int, batch: int) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    if kind == "engine":
        import hashlib

        from trainer.config import CheckpointConfig, Config, ModelConfig, TrainConfig
        from trainer.train.engine import Engine

        base = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
        (base / "models").mkdir()
        (base / "models" / "base").symlink_to(model_dir)
        engine = Engine(base, Config(model=ModelConfig(dtype="auto"),
                                     train=TrainConfig(max_length=row, micro_batch_size=batch, learning_rate=1e-4,
                                                       warmup_steps=10),
                                     checkpoint=CheckpointConfig(every_steps=0, every_minutes=0)))
        engine.start()
        plan = engine.prepare("bench", hashlib.sha256(data.read_bytes()).hexdigest(), data)
        marks = []

        def step(progress) -> bool:
            if cuda:
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), progress.tokens))
            return True

        engine.train(plan, step)
        shutil.rmtree(base, ignore_errors=True)
        warm = marks[3:] if len(marks) > 6 else marks  # skip the first steps (allocator, kernels)
        tokens = sum(t for _, t in warm[1:])
        seconds = warm[-1][0] - warm[0][0]
    else:
        from transformers import (
            AutoModelForCausalLM,
            AutoTokenizer,
            DataCollatorForSeq2Seq,
            Trainer,
            TrainerCallback,
            TrainingArguments,
        )

        from trainer.train.data import records
        from trainer.train.examples import IGNORE, RecordEncoder, hf_labels

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        encoder = RecordEncoder(tokenizer, max_length=row)
        rows = []
        for rec in records(data):
            ex, _ = encoder.encode(rec)
            labels = hf_labels(ex)
            rows.append({"input_ids": ex.input_ids, "labels": labels})
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                     attn_implementation="sdpa")
        marks = []

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if cuda:
                    torch.cuda.synchronize()
                marks.append(time.perf_counter())

        out = Path(tempfile.mkdtemp(prefix="hf-gpu-"))
        args = TrainingArguments(
            output_dir=str(out), per_device_train_batch_size=batch, learning_rate=1e-4, warmup_steps=10,
            lr_scheduler_type="constant_with_warmup", max_grad_norm=1.0, num_train_epochs=1, bf16=cuda,
            use_cpu=not cuda, logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True,
            optim="adamw_torch_fused" if cuda else "adamw_torch",
            train_sampling_strategy="group_by_length" if kind == "hf-trainer-grouped" else "random")
        trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[Clock()],
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE))
        start = time.perf_counter()
        trainer.train()
        shutil.rmtree(out, ignore_errors=True)
        # Same accounting as the engine: real tokens over the steps after the first few.
        steps = len(marks)
        skip = 3 if steps > 6 else 0
        per_step = sum(len(r["input_ids"]) for r in rows) / max(steps, 1)
        tokens = per_step * (steps - skip - 1)
        seconds = marks[-1] - (marks[skip] if skip else start)
    peak_gpu = torch.cuda.max_memory_allocated() if cuda else 0
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "peak_gpu": peak_gpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, to test the script")
    parser.add_argument("--row", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.data, args.row, args.batch)))
        return
    if args.smoke:
        args.row, args.batch, args.records, args.runs = 128, 4, 200, 1
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        params = build(work / "model", SMOKE if args.smoke else QWEN2_05B)
        data = make_data(work / "data.jsonl", args.records, args.row)
        results: dict[str, list[dict]] = {"engine": [], "hf-trainer": [], "hf-trainer-grouped": []}
        for _ in range(args.runs):
            for kind in results:
                argv = [sys.executable, __file__, "--worker", kind, "--model", str(work / "model"),
                        "--data", str(data), "--row", str(args.row), "--batch", str(args.batch)]
                out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
                if out.returncode != 0:
                    raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
                results[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"model: {params / 1e6:.0f}M parameters; rows of {args.row} tokens, {args.batch} per step\n")
        base = statistics.median(r["tokens_per_s"] for r in results["hf-trainer"])
        print("| contender | real tokens/s | vs HF Trainer | MFU | peak GPU memory |")
        print("|---|---:|---:|---:|---:|")
        for kind, runs in results.items():
            tps = statistics.median(r["tokens_per_s"] for r in runs)
            mfu = 6 * params * tps / PEAK_FLOPS
            gpu = max(r["peak_gpu"] for r in runs) / 2**30
            print(f"| {kind} | {tps:,.0f} | {tps / base:.2f}x | {100 * mfu:.1f}% | {gpu:.1f} GiB |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
