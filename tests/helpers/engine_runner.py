"""Trains a fixed list of items with the real engine, resuming from its checkpoints.

    engine_runner.py BASE CONFIG_JSON ITEM_PATH...

Prints one JSON line per optimizer step ({"global_step", "loss"}), one per item finished
({"item_eval": its held-out evaluation}) and, at the end, {"finished": sha256 of the
trained weights, "eval": their numbers on the first item's records}. Killed at any moment and started again, it
continues from the newest valid checkpoint: the item in progress from its cursor, then the
rest. (The daemon does this with the real queue; this runner keeps the engine test small.)
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import orjson

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from trainer.config import parse_config  # noqa: E402
from trainer.train.engine import Engine  # noqa: E402


def weights_digest(engine: Engine) -> str:
    digest = hashlib.sha256()
    for name in sorted(engine.params):
        digest.update(name.encode())
        digest.update(engine.params[name].detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    base, config_json, *paths = sys.argv[1:]
    engine = Engine(Path(base), parse_config(orjson.loads(config_json)))
    engine.start()
    items = [(f"item{n}", hashlib.sha256(Path(p).read_bytes()).hexdigest(), Path(p)) for n, p in enumerate(paths)]
    state = engine.state
    start = 0
    if state.cursor:
        start = next(n for n, item in enumerate(items) if item[0] == state.cursor["item_id"])
    elif state.last_completed:
        start = 1 + next(n for n, item in enumerate(items) if item[0] == state.last_completed["item_id"])

    def report(progress) -> bool:
        print(orjson.dumps({"global_step": progress.global_step, "loss": progress.loss,
                            "skipped": progress.skipped}).decode(), flush=True)
        return True

    for item_id, sha, path in items[start:]:
        if engine.train(engine.prepare(item_id, sha, path), report):
            # The held-out evaluation at the item's end (kept in the checkpointed state).
            print(orjson.dumps({"item_eval": engine.state.last_eval}).decode(), flush=True)
    # The final weights scored on a fixed set, as consolidation scores a named eval set.
    from trainer.train import evalsets, release_eval

    records = list(evalsets.read_records(paths[0]))
    numbers = release_eval.scorer(engine.config, engine.encoder, engine.pad_id).score(
        engine.model, engine.device, records)
    print(orjson.dumps({"finished": weights_digest(engine), "global_step": engine.state.global_step,
                        "eval": numbers}).decode(), flush=True)


if __name__ == "__main__":
    main()
