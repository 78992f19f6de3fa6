"""What evaluation costs, as a share of training time, on the demo (1.2M) and 34M models.

    .venv/bin/python bench/bench_eval.py [--models tiny,34m] [--records 400] [--items 2] [--rounds 2]

The daemon's path without the daemon: a real base dir, items queued with enqueue, claimed,
trained by the real engine and completed, then consolidated by the engine (every eval set,
the gate, sample outputs, the publication), ``--rounds`` times ``--items`` items. Default
``[eval]`` settings (2 % held out, 8,192 tokens per set, 8 prompts of 32 tokens) and the demo's
eval files (a 100-record general set, 3 prompts); the demo's training settings (rows of 256,
8 rows per step, lr 1e-3), fp32 on the CPU, one thread. The first consolidation compares with the base
only; the later ones also with the previous version, whose numbers on the grown held-out pool
are computed again (its weights loaded).

Timed apart, in the same run: training (engine.train less its held-out evaluation), the
held-out evaluation at each item's end, and the evaluation at each consolidation. Printed
as JSON: seconds and eval / training ratios, per model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_train import MODELS, make_data  # noqa: E402

DEMO_TRAIN = {"max_length": 256, "micro_batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 10}


class Timer:
    def __init__(self, module, name: str) -> None:
        self.seconds = 0.0
        original = getattr(module, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        setattr(module, name, timed)


def run(model: str, work: Path, records: int, items: int, rounds: int) -> dict:
    from trainer.config import load_config
    from trainer.demo.sample_data import write_eval_files
    from trainer.intake import enqueue
    from trainer.spool import queue
    from trainer.spool.layout import init_base
    from trainer.train import release_eval
    from trainer.train.demo_model import build_demo_model
    from trainer.train.engine import Engine

    toml = "[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in DEMO_TRAIN.items())
    toml += "[checkpoint]\nevery_steps = 0\nevery_minutes = 0\n[daemon]\nmin_free_bytes = 0\n"
    layout, _ = init_base(work / "base", toml)
    build_demo_model(layout.root / "models" / "base", **MODELS[model])
    write_eval_files(layout.eval_dir)
    config = load_config(layout.config_file)
    holdout, consolidation = Timer(release_eval, "holdout"), Timer(release_eval, "at_consolidation")
    # Where a consolidation's evaluation goes (names as release_eval calls them).
    parts = {"sets": Timer(release_eval, "eval_sets"), "scoring": Timer(release_eval, "_score_all"),
             "loading": Timer(release_eval, "load_dir"), "samples": Timer(release_eval, "samples")}
    engine = Engine(layout.root, config)
    engine.start()
    training = 0.0
    rounds_out = []
    for round_number in range(rounds):
        before = (holdout.seconds, consolidation.seconds, training)
        for n in range(items):
            data = make_data(work / f"item-{round_number}-{n}.jsonl", records, seed=100 * round_number + n)
            enqueue.enqueue(layout, data, limits=config.spool)
            item = queue.claim_next(layout)
            plan = engine.prepare(item.id, item.meta.sha256, item.data_path)
            eval_before = holdout.seconds
            started = time.perf_counter()
            engine.train(plan, lambda progress: True)
            training += time.perf_counter() - started - (holdout.seconds - eval_before)
            queue.complete(layout, item.id)
        version = engine.consolidate(layout.root / "models", keep_versions=0)
        rounds_out.append({"version": version.name, "held_back": version.parent.name == ".candidates",
                           "training_s": round(training - before[2], 2),
                           "holdout_eval_s": round(holdout.seconds - before[0], 3),
                           "consolidation_eval_s": round(consolidation.seconds - before[1], 3)})
    total_eval = holdout.seconds + consolidation.seconds
    return {"model": model, "records_per_item": records, "items": items * rounds, "training_s": round(training, 2),
            "holdout_eval_s": round(holdout.seconds, 3), "consolidation_eval_s": round(consolidation.seconds, 3),
            "holdout_ratio": round(holdout.seconds / training, 4),
            "eval_ratio": round(total_eval / training, 4), "rounds": rounds_out,
            "consolidation_parts_s": {name: round(t.seconds, 3) for name, t in parts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,34m")
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--items", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)  # on a shared 2-core machine, two threads spin against the load
    results = []
    for model in args.models.split(","):
        work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
        try:
            results.append(run(model, work, args.records, args.items, args.rounds))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"results": results}, indent=2))


if __name__ == "__main__":
    main()
