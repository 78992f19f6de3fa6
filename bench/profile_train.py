"""Where a training step's time goes: the engine against the HF Trainer's padding-free setup.

    .venv/bin/python bench/profile_train.py [--model 34m] [--records 600] [--runs 1]

Same model, data, rows and hyperparameters as bench/bench_train.py (8 sequences a step, rows
of 256, AdamW lr 1e-3, clip 1.0, fp32 CPU, torch's default threads unless --threads). Two
contenders, each in its own process, alternating when --runs > 1 (medians):

- engine: this project's Engine, unchanged, packed rows of 256 tokens;
- hf-flat: transformers.Trainer with DataCollatorWithFlattening (the 8 examples of a step
  concatenated into one row, position ids restarting per example), SDPA attention.

Every phase of a step is timed by wrapping the library functions both sides call (nothing
in the project is edited): data (the engine's packing; the Trainer's collator), collation of
rows into tensors, forward (up to the logits), loss, backward, clip, optimizer, zero_grad;
"other" is the rest of the step (the loops' own bookkeeping). Times are self times (a phase
inside another is not counted twice) per 1,000 real tokens, so sides whose steps carry
different token counts compare directly. Then torch.profiler (record_shapes) watches a window
of about --profile-tokens real tokens on each side (excluded from the phase figures, since
the profiler slows the step) and prints the top operators side by side, and the input
shapes of the heaviest ones.

    .venv/bin/python bench/profile_train.py --model 34m --shapes --threads 1 [--runs 5]

--shapes instead compares row shapes in one process, interleaved (ABC CBA ...), medians of
--runs: the forward and backward of ~2,048 tokens as the engine's 8 packed rows of 256, as 4
micro-batches of 2 rows, as 6 flattened rows of 342 (the Trainer's padding-free step), and
as 8 rows of plain causal attention (no packing mask); then one AdamW step and one clip.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_train import BATCH, LR, MODELS, ROW, WARMUP, make_data  # noqa: E402

SIDES = ("engine", "hf-flat")
PHASES = ("data", "collate", "forward", "loss", "backward", "clip", "optimizer", "zero_grad", "other")


class Phases:
    """Self time per phase: a phase timed inside another is subtracted from the outer one."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._stack: list[list] = []  # [name, start, time in children]
        self.paused = False

    def push(self, name: str) -> None:
        self._stack.append([name, time.perf_counter(), 0.0])

    def pop(self, name: str) -> None:
        while self._stack:  # an exception may have skipped an inner pop
            inner, start, children = self._stack.pop()
            elapsed = time.perf_counter() - start
            if not self.paused:
                self.seconds[inner] += elapsed - children
            if self._stack:
                self._stack[-1][2] += elapsed
            if inner == name:
                return

    @contextmanager
    def timed(self, name: str):
        self.push(name)
        try:
            yield
        finally:
            self.pop(name)

    def wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.timed(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)


def instrument_common(phases: Phases) -> None:
    """The calls both sides make through torch itself."""
    import torch

    phases.wrap(torch.Tensor, "backward", "backward")
    phases.wrap(torch.nn.utils, "clip_grad_norm_", "clip")
    phases.wrap(torch.optim.AdamW, "step", "optimizer")
    phases.wrap(torch.optim.Optimizer, "zero_grad", "zero_grad")
    phases.wrap(torch.nn.Module, "zero_grad", "zero_grad")


def instrument_model(phases: Phases, model) -> None:
    """forward = from the model's call to the logits (lm_head's output); loss = from there to
    the model's return (the HF model computes its loss inside when given labels)."""
    def start(*_) -> None:  # a hook that returns something replaces the input or output
        phases.push("forward")

    def logits(*_) -> None:
        phases.pop("forward")
        phases.push("loss")

    def end(*_) -> None:
        phases.pop("loss")

    model.register_forward_pre_hook(start)
    model.lm_head.register_forward_hook(logits)
    model.register_forward_hook(end)


class Window:
    """torch.profiler over about ``tokens`` real tokens after ``skip`` warm-up steps; the
    phase timers pause meanwhile and the window's wall time is left out of the total."""

    def __init__(self, phases: Phases, tokens: int, skip: int = 2) -> None:
        self.phases, self.tokens, self.skip = phases, tokens, skip
        self.steps = 0
        self.profiler = None
        self.done = False
        self.window_tokens = 0
        self.excluded_s = 0.0

    def after_step(self, tokens: int) -> None:
        import torch.profiler

        self.steps += 1
        # What runs after the last step (the engine's held-out evaluation) belongs to no step.
        self.at_last_step = dict(self.phases.seconds)
        if self.profiler is not None:
            self.window_tokens += tokens
            if self.window_tokens >= self.tokens:
                self.finish()
        elif not self.done and self.steps == self.skip:
            self.phases.paused = True
            self._started = time.perf_counter()
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                   record_shapes=True)
            self.profiler.start()

    def finish(self) -> None:
        """Close the window (also when the item ends inside it)."""
        if self.profiler is None:
            return
        self.profiler.stop()
        self.excluded_s = time.perf_counter() - self._started
        self._events, self.profiler, self.done = self.profiler, None, True
        self.phases.paused = False

    def operators(self, top: int) -> dict:
        if not self.done:
            raise SystemExit("the item ended before the profiled window began: use more --records")
        averages = self._events.key_averages()
        ops = sorted((e for e in averages if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in averages)
        by_shape = sorted((e for e in self._events.key_averages(group_by_input_shape=True)
                           if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
        return {"total_us": total,
                "ops": [[e.key, e.self_cpu_time_total, e.count] for e in ops[:top * 2]],
                "shapes": [[e.key, str(e.input_shapes), e.self_cpu_time_total, e.count] for e in by_shape[:top]]}


def worker_engine(base: Path, data: Path, profile_tokens: int, top: int) -> dict:
    import torch

    from trainer.config import CheckpointConfig, Config, TrainConfig
    from trainer.train import data as train_data
    from trainer.train import step as train_step
    from trainer.train.engine import Engine

    phases = Phases()
    instrument_common(phases)
    phases.wrap(train_data.RowStream, "take", "data")
    # step.backward builds the micro-batch's tensors, then runs forward, loss and backward
    # (timed inside it): its self time is the collation.
    phases.wrap(train_step, "backward", "collate")
    phases.wrap(train_step, "summed_loss", "loss")
    config = Config(train=TrainConfig(max_length=ROW, micro_batch_size=BATCH, learning_rate=LR, warmup_steps=WARMUP,
                                      max_grad_norm=1.0),
                    checkpoint=CheckpointConfig(every_steps=0, every_minutes=0))
    engine = Engine(base, config)
    engine.start()
    instrument_model(phases, engine.model)
    plan = engine.prepare("bench", hashlib.sha256(data.read_bytes()).hexdigest(), data)
    window = Window(phases, profile_tokens)
    counts = {"tokens": 0, "steps": 0, "rows_tokens": 0}
    start = time.perf_counter()
    end = start

    def after_step(progress) -> bool:
        nonlocal end
        counts["tokens"] += progress.tokens
        counts["steps"] += 1
        end = time.perf_counter()
        window.after_step(progress.tokens)
        return True

    engine.train(plan, after_step)
    return _result(phases, window, counts, end - start, top, torch.get_num_threads())


def worker_hf_flat(model_dir: Path, data: Path, profile_tokens: int, top: int, batch: int) -> dict:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from trainer.train.data import records
    from trainer.train.examples import RecordEncoder, hf_labels

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    phases = Phases()
    instrument_common(phases)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoder = RecordEncoder(tokenizer, max_length=ROW)
    rows = []
    for rec in records(data):
        example, _ = encoder.encode(rec)
        rows.append({"input_ids": example.input_ids, "labels": hf_labels(example)})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    instrument_model(phases, model)
    collator = DataCollatorWithFlattening()
    counts = {"tokens": 0, "steps": 0}
    step_tokens = []

    def collate(features):
        with phases.timed("data"):
            step_tokens.append(sum(len(f["input_ids"]) for f in features))
            return collator(features)

    out = Path(tempfile.mkdtemp(prefix="hf-profile-"))
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, learning_rate=LR, warmup_steps=WARMUP,
        lr_scheduler_type="constant_with_warmup", max_grad_norm=1.0, weight_decay=0.0, num_train_epochs=1,
        logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        optim="adamw_torch", dataloader_num_workers=0)
    window = Window(phases, profile_tokens)
    timing = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timing["start"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            tokens = step_tokens.pop(0)
            counts["tokens"] += tokens
            counts["steps"] += 1
            timing["end"] = time.perf_counter()
            window.after_step(tokens)

    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    return _result(phases, window, counts, timing["end"] - timing["start"], top, torch.get_num_threads())


def _result(phases: Phases, window: Window, counts: dict, seconds: float, top: int, threads: int) -> dict:
    window.finish()
    timed_s = seconds - window.excluded_s
    timed_tokens = counts["tokens"] - window.window_tokens
    measured = dict(window.at_last_step)
    measured["other"] = timed_s - sum(v for k, v in measured.items() if k != "other")
    return {"tokens": counts["tokens"], "steps": counts["steps"], "seconds": seconds, "threads": threads,
            "tokens_per_s": timed_tokens / timed_s, "ms_per_1k": {k: 1e6 * v / timed_tokens for k, v in measured.items()},
            "window_tokens": window.window_tokens, **window.operators(top)}


SHAPES = ("rows 8x256", "rows 2x256, 4 times", "flat 1x342, 6 times", "rows 8x256 causal, no mask")


def compare_shapes(model_name: str, reps: int) -> None:
    """Milliseconds per 1,000 tokens of forward + backward for each of SHAPES, interleaved."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.train.demo_model import build_demo_model
    from trainer.train.loss import forward_packed, summed_loss

    work = Path(tempfile.mkdtemp(prefix="profile-shapes-"))
    try:
        build_demo_model(work / "model", **MODELS[model_name])
        model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32, attn_implementation="sdpa")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    vocab = model.config.vocab_size
    example = 42  # the mean example length of bench_train.py's data

    def batch(rows: int, length: int, mask: bool = True) -> int:
        ids = torch.randint(10, vocab, (rows, length))
        if mask:  # position ids restarting every `example` tokens: transformers masks per example
            logits = forward_packed(model, ids, torch.arange(length).remainder(example).repeat(rows, 1))
        else:
            logits = model(input_ids=ids, use_cache=False).logits
        (summed_loss(logits, ids) / ids.numel()).backward()
        return ids.numel()

    plans = {SHAPES[0]: lambda: batch(8, 256), SHAPES[1]: lambda: sum(batch(2, 256) for _ in range(4)),
             SHAPES[2]: lambda: sum(batch(1, 342) for _ in range(6)), SHAPES[3]: lambda: batch(8, 256, mask=False)}

    def timed(plan) -> float:
        start = time.perf_counter()
        tokens = plan()
        model.zero_grad(set_to_none=False)
        return 1e6 * (time.perf_counter() - start) / tokens

    for plan in plans.values():  # warm-up
        timed(plan)
    runs: dict[str, list[float]] = {name: [] for name in plans}
    for rep in range(reps):
        for name in (SHAPES if rep % 2 == 0 else SHAPES[::-1]):
            runs[name].append(timed(plans[name]))
    optimizer.step()  # the first step allocates AdamW's state

    def seconds(call) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    optimizer_s = statistics.median(seconds(optimizer.step) for _ in range(3))
    clip_s = statistics.median(seconds(lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
                               for _ in range(3))
    base = statistics.median(runs[SHAPES[0]])
    print(f"threads: {torch.get_num_threads()}, medians of {reps}\n")
    print("| forward + backward of ~2,048 tokens as | ms per 1,000 tokens | vs 8 rows |")
    print("|---|---:|---:|")
    for name, values in runs.items():
        print(f"| {name} | {statistics.median(values):,.1f} | {statistics.median(values) / base:.2f}x |")
    print(f"\none AdamW step {1e3 * optimizer_s:,.1f} ms, one clip {1e3 * clip_s:,.1f} ms (per optimizer step, "
          f"whatever its tokens)")


def run_worker(side: str, work: Path, data: Path, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--worker", side, "--work", str(work), "--model", args.model, "--data",
            str(data), "--profile-tokens", str(args.profile_tokens), "--top", str(args.top), "--threads",
            str(args.threads), "--hf-batch", str(args.hf_batch)]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{side} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: dict[str, list[dict]], top: int) -> None:
    med = {side: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
                  "ms_per_1k": {p: statistics.median(r["ms_per_1k"][p] for r in runs) for p in PHASES}}
           for side, runs in results.items()}
    last = {side: runs[-1] for side, runs in results.items()}
    a, b = SIDES
    print(f"threads: {last[a]['threads']}; steps: {a} {last[a]['steps']} ({last[a]['tokens'] / last[a]['steps']:,.0f} "
          f"real tokens each), {b} {last[b]['steps']} ({last[b]['tokens'] / last[b]['steps']:,.0f} each)\n")
    print(f"real tokens/s outside the profiled window: {a} {med[a]['tokens_per_s']:,.0f}, "
          f"{b} {med[b]['tokens_per_s']:,.0f}: {med[a]['tokens_per_s'] / med[b]['tokens_per_s']:.2f}x\n")
    print(f"| phase (ms per 1,000 real tokens) | {a} | share | {b} | share | {b} - {a} |")
    print("|---|---:|---:|---:|---:|---:|")
    totals = {s: sum(med[s]["ms_per_1k"].values()) for s in SIDES}
    for phase in PHASES:
        x, y = med[a]["ms_per_1k"][phase], med[b]["ms_per_1k"][phase]
        print(f"| {phase} | {x:,.1f} | {100 * x / totals[a]:.1f} % | {y:,.1f} | {100 * y / totals[b]:.1f} % | {y - x:+,.1f} |")
    print(f"| **step** | **{totals[a]:,.1f}** | | **{totals[b]:,.1f}** | | {totals[b] - totals[a]:+,.1f} |\n")

    # Operators: self CPU time per 1,000 real tokens of the profiled window.
    per_1k = {s: {op: (us / 1e3 / (last[s]["window_tokens"] / 1e3), count) for op, us, count in last[s]["ops"]}
              for s in SIDES}
    names = sorted(set(per_1k[a]) | set(per_1k[b]), key=lambda op: -max(per_1k[a].get(op, (0, 0))[0],
                                                                        per_1k[b].get(op, (0, 0))[0]))[:top]
    print(f"profiled window: {a} {last[a]['window_tokens']:,} real tokens, {b} {last[b]['window_tokens']:,}\n")
    print(f"| operator (self CPU ms per 1,000 real tokens, calls) | {a} | {b} | {b} - {a} |")
    print("|---|---:|---:|---:|")
    for op in names:
        (x, n), (y, m) = per_1k[a].get(op, (0.0, 0)), per_1k[b].get(op, (0.0, 0))
        print(f"| {op} | {x:,.2f} ({n}) | {y:,.2f} ({m}) | {y - x:+,.2f} |")
    for side in SIDES:
        window = last[side]["window_tokens"] / 1e3
        print(f"\n{side}: heaviest operators by input shape (self CPU ms per 1,000 real tokens, calls)")
        for op, shapes, us, count in last[side]["shapes"]:
            print(f"  {us / 1e3 / window:8.2f}  {count:5d}  {op} {shapes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="34m", choices=sorted(MODELS))
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--profile-tokens", type=int, default=4096,
                        help="real tokens in the torch.profiler window of each side")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--hf-batch", type=int, default=BATCH, help="examples per step of the HF side")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each side (0: torch's default)")
    parser.add_argument("--shapes", action="store_true", help="compare row shapes in one process instead")
    parser.add_argument("--worker", choices=SIDES)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        model_dir = args.work / args.model / "models" / "base"
        if args.worker == "engine":
            base = Path(tempfile.mkdtemp(prefix="engine-profile-"))
            try:
                shutil.copytree(model_dir, base / "models" / "base")
                result = worker_engine(base, args.data, args.profile_tokens, args.top)
            finally:
                shutil.rmtree(base, ignore_errors=True)
        else:
            result = worker_hf_flat(model_dir, args.data, args.profile_tokens, args.top, args.hf_batch)
        print(json.dumps(result))
        return

    if args.shapes:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"model: {args.model}, load average before: {os.getloadavg()[0]:.2f}")
        compare_shapes(args.model, max(args.runs, 3))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return

    from trainer.train.demo_model import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="profile-train-"))
    try:
        data = make_data(work / "chat.jsonl", args.records)
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"model: {args.model} {MODELS[args.model]}, data: {args.records} records, fp32 CPU, "
              f"load average before: {os.getloadavg()[0]:.2f}\n")
        build_demo_model(work / args.model / "models" / "base", **MODELS[args.model])
        results: dict[str, list[dict]] = {side: [] for side in SIDES}
        for _ in range(args.runs):
            for side in SIDES:
                results[side].append(run_worker(side, work, data, args))
        report(results, args.top)
        print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
