"""Training throughput of the engine against the Hugging Face Trainer, side by side.

    .venv/bin/python bench/bench_train.py [--models tiny,34m] [--runs 3] [--records 600]

Same model (built locally, random init), same chat data (sample tasks plus long free-text
answers, for a realistic spread of lengths), same hyperparameters (AdamW, lr 1e-3 with 10
warm-up steps, clip 1.0, 8 sequences per step, one epoch), fp32 on the CPU. Each run is its
own process; runs alternate between the contenders; medians of --runs. Throughput is real
tokens (padding excluded) per second of training, model loading excluded:

- engine: this project's loop, packing examples into rows of 256 tokens with a block-diagonal
  mask (position ids restart per example), loss on assistant tokens only;
- hf-trainer: transformers.Trainer with its defaults (examples padded per batch);
- hf-trainer-grouped: the same with train_sampling_strategy="group_by_length" (less padding).

Also: checkpoint save time against bytes written, resume time (verify + load), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
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

MODELS = {"tiny": dict(hidden=128, layers=4, heads=4, intermediate=512),
          "34m": dict(hidden=512, layers=8, heads=8, intermediate=2048)}
ROW = 256
BATCH = 8
LR, WARMUP = 1e-3, 10


def make_data(path: Path, records: int, seed: int = 0) -> Path:
    """Chat tasks, and one record in five a long free-text answer (up to ~220 tokens)."""
    import orjson

    from trainer.demo.sample_data import WORDS, record

    rng = random.Random(seed)
    with open(path, "wb") as fh:
        for _ in range(records):
            rec = record(rng)
            if rng.random() < 0.2:
                words = " ".join(rng.choices(WORDS, k=int(rng.lognormvariate(3.5, 0.6)) % 110 + 5))
                rec = {"messages": [{"role": "user", "content": "Tell me a story."},
                                    {"role": "assistant", "content": words}]}
            fh.write(orjson.dumps(rec) + b"\n")
    return path


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_engine(base: Path, data: Path) -> dict:
    import hashlib

    from trainer.config import CheckpointConfig, Config, TrainConfig
    from trainer.train.engine import Engine

    config = Config(train=TrainConfig(max_length=ROW, micro_batch_size=BATCH, learning_rate=LR, warmup_steps=WARMUP,
                                      max_grad_norm=1.0),
                    checkpoint=CheckpointConfig(every_steps=0, every_minutes=0))
    engine = Engine(base, config)
    engine.start()
    plan = engine.prepare("bench", hashlib.sha256(data.read_bytes()).hexdigest(), data)
    tokens = 0
    start = time.perf_counter()
    end = start

    def step(progress) -> bool:
        nonlocal tokens, end
        tokens += progress.tokens
        end = time.perf_counter()
        return True

    engine.train(plan, step)
    train_s = end - start
    peak_rss = _peak_rss()  # before the checkpoint and resume measurements load a second copy
    saved_start = time.perf_counter()
    checkpoint = engine.checkpoint()
    save_s = time.perf_counter() - saved_start
    written = sum(f.stat().st_size for f in checkpoint.path.iterdir())
    resumed = Engine(base, config)
    resumed._load_model(None)
    resume_start = time.perf_counter()
    resumed._restore(resumed.store.latest_valid())
    resume_s = time.perf_counter() - resume_start
    return {"tokens": tokens, "seconds": train_s, "tokens_per_s": tokens / train_s, "steps": plan.total_steps,
            "save_s": save_s, "save_bytes": written, "resume_s": resume_s, "peak_rss": peak_rss}


def worker_hf(model_dir: Path, data: Path, grouped: bool) -> dict:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from trainer.train.data import records
    from trainer.train.examples import IGNORE, RecordEncoder, hf_labels

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoder = RecordEncoder(tokenizer, max_length=ROW)
    rows = []
    for rec in records(data):
        example, _ = encoder.encode(rec)
        labels = hf_labels(example)
        rows.append({"input_ids": example.input_ids, "labels": labels})
    tokens = sum(len(r["input_ids"]) for r in rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    out = Path(tempfile.mkdtemp(prefix="hf-bench-"))
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, learning_rate=LR, warmup_steps=WARMUP,
        lr_scheduler_type="constant_with_warmup", max_grad_norm=1.0, weight_decay=0.0, num_train_epochs=1,
        logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        optim="adamw_torch", dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if grouped else "random")
    timing = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timing["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            timing["end"] = time.perf_counter()

    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE),
                      callbacks=[Clock()])
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    seconds = timing["end"] - timing["start"]
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss": _peak_rss()}


def run_worker(kind: str, work: Path, model: str, data: Path) -> dict:
    argv = [sys.executable, __file__, "--worker", kind, "--work", str(work), "--model", model, "--data", str(data)]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,34m")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--worker", choices=["engine", "hf-trainer", "hf-trainer-grouped"])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--model")
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.worker:
        model_dir = args.work / args.model / "models" / "base"
        if args.worker == "engine":
            base = Path(tempfile.mkdtemp(prefix="engine-bench-"))
            shutil.copytree(model_dir, base / "models" / "base")
            result = worker_engine(base, args.data)
            shutil.rmtree(base, ignore_errors=True)
        else:
            result = worker_hf(model_dir, args.data, grouped=args.worker == "hf-trainer-grouped")
        print(json.dumps(result))
        return

    from trainer.train.demo_model import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        data = make_data(work / "chat.jsonl", args.records)
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"data: {args.records} records, torch threads {os.cpu_count()} cores, fp32 CPU\n")
        for name in args.models.split(","):
            build_demo_model(work / name / "models" / "base", **MODELS[name])
            results: dict[str, list[dict]] = {"engine": [], "hf-trainer": [], "hf-trainer-grouped": []}
            for _ in range(args.runs):
                for kind in results:
                    results[kind].append(run_worker(kind, work, name, data))
            base_tps = statistics.median(r["tokens_per_s"] for r in results["hf-trainer"])
            print(f"### {name} model\n")
            print("| contender | real tokens/s (median) | vs HF Trainer | train s (median) | peak RSS |")
            print("|---|---:|---:|---:|---:|")
            for kind, runs in results.items():
                tps = statistics.median(r["tokens_per_s"] for r in runs)
                secs = statistics.median(r["seconds"] for r in runs)
                rss = max(r["peak_rss"] for r in runs) / 2**20
                print(f"| {kind} | {tps:,.0f} | {tps / base_tps:.2f}x | {secs:.1f} | {rss:,.0f} MiB |")
            eng = results["engine"]
            save = statistics.median(r["save_s"] for r in eng)
            size = eng[0]["save_bytes"]
            resume = statistics.median(r["resume_s"] for r in eng)
            print(f"\ncheckpoint: {size / 2**20:.1f} MiB written in {save:.3f} s ({size / 2**20 / save:,.0f} MiB/s, "
                  f"fsync included); resume (verify every file's sha256 + load) {resume:.3f} s\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
