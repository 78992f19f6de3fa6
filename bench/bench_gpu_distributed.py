"""The engine over N GPUs against the strongest Hugging Face setup over the same N GPUs, with MFU.

    .venv/bin/python bench/bench_gpu_distributed.py                # every CUDA GPU (nccl), one prepared run
    .venv/bin/python bench/bench_gpu_distributed.py --smoke        # the same code paths, tiny, CPU, gloo, 2 ranks

Contenders, each its own process tree under torch's elastic agent (``elastic_launch``, as the
daemon's launcher), alternating, median of --runs, model loading excluded; the model is
bench_gpu.py's Qwen2-0.5B shape, random init, bf16 on CUDA:

- engine: this project's engine as shipped (rank 0 leads, the others follow; ``--batch`` packed
  rows of ``--row`` tokens per rank and step, SDPA);
- engine-fsdp: the engine with ``distributed.strategy = "fsdp"`` (FSDP2: every rank holds a
  shard of the weights, gradients and optimizer state; all ranks share one base dir);
- engine-flash-flat / engine-flex: the same engine with its rows flattened to one sequence and
  flash_attention_2 (when flash_attn is importable), or FlexAttention: what a sparse-mask engine
  would gain (patched in the bench process only, nothing in trainer/ changes);
- hf-flatten: transformers.Trainer with its padding-free ``DataCollatorWithFlattening`` and the
  best attention implementation available (flash_attention_3 > flash_attention_2 >
  flex_attention > sdpa), as many examples per rank and step as fill the engine's tokens.

Before timing anything, ``masks.report`` runs packed rows through every attention
implementation available and both layouts, and shows what reaches the attention layers (a
dense (B, 1, L, L) tensor, a BlockMask, or nothing) and whether each example's logits equal
those of the example alone (no attention across examples).

MFU = 6 x parameters x real tokens/s / (N x peak); --peak-tflops defaults to 989 (H100/H200
dense bf16). 6 x parameters leaves attention's own FLOPs out, the same for every contender.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_gpu import QWEN2_05B, SMOKE, build, make_data  # noqa: E402
from gpu_masks import best_attention, check, describe_mask, patch_engine, report  # noqa: E402

SKIP = 3  # warm-up steps left out of the timing (allocator, kernels)


def _init(world_size: int):
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        torch.set_num_threads(1)  # the smoke: one core per rank, no oversubscription
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return torch, cuda


def engine_rank(kind: str, model_dir: str, data: str, out: str, row: int, batch: int) -> None:
    """One rank of the engine; rank 0 writes the figures."""
    import hashlib

    from trainer.config import CheckpointConfig, Config, DistributedConfig, ModelConfig, TrainConfig
    from trainer.train.engine import Engine
    from trainer.train.follower import follow
    from trainer.train.world import World

    world = World.from_environment()
    torch, cuda = _init(world.size)
    patch_engine(kind)
    sharded = kind == "engine-fsdp"  # the ranks write their shards into one base dir
    base = Path(f"{out}.base") if sharded else Path(tempfile.mkdtemp(prefix=f"gpu-dist-{world.rank}-"))
    try:
        (base / "models").mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            (base / "models" / "base").symlink_to(model_dir)
        config = Config(model=ModelConfig(dtype="auto"),
                        train=TrainConfig(max_length=row, micro_batch_size=batch, grad_accum_steps=world.size,
                                          learning_rate=1e-4, warmup_steps=10),
                        checkpoint=CheckpointConfig(every_steps=0, every_minutes=0),
                        distributed=DistributedConfig(strategy="fsdp" if sharded else "ddp"))
        engine = Engine(base, config, world)
        if not world.is_leader:
            follow(engine)
            return
        engine.start()
        mask = describe_mask(engine.model)
        path = Path(data)
        plan = engine.prepare("bench", hashlib.sha256(path.read_bytes()).hexdigest(), path)
        marks = []

        def step(progress) -> bool:
            if cuda:
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), progress.tokens))
            return True

        engine.train(plan, step)
        engine.release_followers()
        warm = marks[SKIP:] if len(marks) > 2 * SKIP else marks
        tokens, seconds = sum(t for _, t in warm[1:]), warm[-1][0] - warm[0][0]
        Path(out).write_text(json.dumps({
            "tokens_per_s": tokens / seconds, "steps": len(marks),
            "attention": engine.model.config._attn_implementation, "mask": mask(), "peak_gpu": torch.cuda.max_memory_allocated() if cuda else 0}))
    finally:
        if world.is_leader or not sharded:
            shutil.rmtree(base, ignore_errors=True)
        if world.distributed:
            torch.distributed.destroy_process_group()


def hf_rank(kind: str, model_dir: str, data: str, out: str, row: int, batch: int) -> None:
    """One rank of transformers.Trainer, padding-free; rank 0 writes the figures."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, Trainer, TrainerCallback
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    from trainer.train.data import records
    from trainer.train.examples import RecordEncoder, hf_labels

    size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    torch, cuda = _init(size)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoder = RecordEncoder(tokenizer, max_length=row)
    rows = []
    for rec in records(Path(data)):
        example, _ = encoder.encode(rec)
        rows.append({"input_ids": example.input_ids, "labels": hf_labels(example)})
    mean = sum(len(r["input_ids"]) for r in rows) / len(rows)
    per_rank = max(1, round(batch * row / mean))  # the engine's tokens per rank and step
    attention = best_attention(cuda)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation=attention)
    mask = describe_mask(model)
    counted: list[int] = []
    marks: list[float] = []

    class Counting(DataCollatorWithFlattening):
        def __call__(self, *args, **kwargs):
            flat = super().__call__(*args, **kwargs)
            counted.append(flat["input_ids"].numel())
            return flat

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    work = Path(tempfile.mkdtemp(prefix="hf-gpu-dist-"))
    args = TrainingArguments(
        output_dir=str(work), per_device_train_batch_size=per_rank, learning_rate=1e-4, warmup_steps=10,
        lr_scheduler_type="constant_with_warmup", max_grad_norm=1.0, num_train_epochs=1, bf16=cuda,
        use_cpu=not cuda, logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True,
        optim="adamw_torch_fused" if cuda else "adamw_torch", dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[Clock()],
                      data_collator=Counting(return_flash_attn_kwargs=attention.startswith("flash")))
    trainer.train()
    shutil.rmtree(work, ignore_errors=True)
    # The collator runs at most a batch ahead of the steps: the window's tokens are its batches'.
    skip = SKIP if len(marks) > 2 * SKIP else 0
    mine = torch.tensor([float(sum(counted[skip + 1:len(marks)]))], device="cuda" if cuda else "cpu")
    if size > 1:
        torch.distributed.all_reduce(mine)  # every rank's tokens (nccl reduces CUDA tensors only)
    seconds = marks[-1] - marks[skip]
    if rank == 0:
        Path(out).write_text(json.dumps({
            "tokens_per_s": mine.item() / seconds, "steps": len(marks), "attention": attention,
            "mask": mask(), "per_rank_examples": per_rank,
            "peak_gpu": torch.cuda.max_memory_allocated() if cuda else 0}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, nproc: int, model_dir: Path, data: Path, out: Path, row: int, batch: int) -> None:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id="bench-gpu", rdzv_backend="c10d",
                          rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    entry = hf_rank if kind == "hf-flatten" else engine_rank
    elastic_launch(config, entry)(kind, str(model_dir), str(data), str(out), row, batch)


def contenders(cuda: bool) -> list[str]:
    """The engine as shipped, its sparse-mask variants this machine can run, the HF setup."""
    import importlib.util

    kinds = ["engine", "engine-fsdp"]
    if cuda and importlib.util.find_spec("flash_attn") is not None:
        kinds.append("engine-flash-flat")
    if cuda:
        kinds.append("engine-flex")  # FlexAttention has no backward on the CPU
    return [*kinds, "hf-flatten"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, 2 gloo ranks")
    parser.add_argument("--nproc", type=int, help="ranks (default: every CUDA GPU)")
    parser.add_argument("--row", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8, help="packed rows per rank and step")
    parser.add_argument("--records", type=int, default=4000, help="records per rank")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--only", help="comma-separated contenders (default: all this machine can run)")
    parser.add_argument("--no-masks", action="store_true", help="skip the attention mask report")
    parser.add_argument("--launch")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.launch:
        launch(args.launch, args.nproc, args.model, args.data, args.out, args.row, args.batch)
        return
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    if args.smoke:
        args.row, args.batch, args.records, args.runs, args.nproc = 128, 2, 120, 1, args.nproc or 2
    nproc = args.nproc or torch.cuda.device_count()
    if nproc < 1:
        raise SystemExit("no CUDA GPU here: run with --smoke (CPU, gloo) or on a machine with GPUs")
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-dist-"))
    try:
        params = build(work / "model", SMOKE if args.smoke else QWEN2_05B)
        data = make_data(work / "data.jsonl", args.records * nproc, args.row)
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        name = torch.cuda.get_device_name() if cuda else "CPU (gloo)"
        print(f"{nproc} x {name}; model {params / 1e6:.1f}M parameters; rows of {args.row} tokens, "
              f"{args.batch} per rank and step; load average {os.getloadavg()[0]:.2f}\n")
        kinds = [k for k in contenders(cuda) if not args.only or k in args.only.split(",")]
        if not args.no_masks:
            check(report(work / "model", args.row, cuda), kinds, cuda)
        results: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for _ in range(args.runs):
            for kind in results:
                out = work / f"{kind}.json"
                argv = [sys.executable, __file__, "--launch", kind, "--nproc", str(nproc), "--model",
                        str(work / "model"), "--data", str(data), "--out", str(out), "--row", str(args.row),
                        "--batch", str(args.batch)]
                hidden = {"CUDA_VISIBLE_DEVICES": ""} if args.smoke else {}  # the smoke stays on the CPU
                done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env={**os.environ, **hidden})
                if done.returncode != 0:
                    raise SystemExit(f"{kind} failed:\n{done.stderr[-4000:]}")
                results[kind].append(json.loads(out.read_text()))
        base = statistics.median(r["tokens_per_s"] for r in results.get("hf-flatten", results[kinds[0]]))
        print("| contender | attention | mask reaching attention | steps | real tokens/s | vs hf-flatten | MFU "
              "| peak GPU memory |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for kind, runs in results.items():
            tps = statistics.median(r["tokens_per_s"] for r in runs)
            mfu = 6 * params * tps / (nproc * args.peak_tflops * 1e12)
            gpu = max(r["peak_gpu"] for r in runs) / 2**30
            print(f"| {kind} | {runs[0]['attention']} | {runs[0]['mask']} | {runs[0]['steps']} | {tps:,.0f} "
                  f"| {tps / base:.2f}x | {100 * mfu:.1f}% | {gpu:.1f} GiB |")
        if "hf-flatten" in results:
            print(f"\n(hf-flatten: {results['hf-flatten'][0]['per_rank_examples']} examples per rank and step)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
