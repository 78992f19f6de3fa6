"""Sample chat data for the demo and the tests: small, varied, made locally, deterministic.

Simple tasks with checkable answers (arithmetic, reversing and counting words), in all three
accepted record shapes, with a realistic spread of lengths so packing has work to do.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson

WORDS = ("river stone cloud lamp orbit cedar maple signal harbor copper lantern meadow "
         "quartz ember falcon willow canyon prism velvet tundra").split()


def _task(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randrange(100), rng.randrange(100)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    words = rng.choices(WORDS, k=rng.randint(2, 12))
    if kind == 1:
        return f"Reverse these words: {' '.join(words)}", " ".join(reversed(words))
    return f"How many words are in: {' '.join(words)}", f"There are {len(words)} words."


def record(rng: random.Random) -> dict:
    question, answer = _task(rng)
    shape = rng.random()
    if shape < 0.8:
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": "You answer briefly and exactly."})
        for _ in range(rng.randint(0, 2)):  # earlier turns make lengths vary
            q, a = _task(rng)
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return {"messages": messages}
    if shape < 0.9:
        return {"prompt": question + "\n", "completion": answer}
    return {"text": f"{question} {answer}"}


def write_sample_chat(path: Path, records: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        for _ in range(records):
            fh.write(orjson.dumps(record(rng)) + b"\n")
    return path


PROMPTS = ("What is 12 plus 30?", "Reverse these words: river stone cloud",
           "How many words are in: maple signal harbor copper")


def write_eval_files(eval_dir: Path, *, general_records: int = 50, seed: int = 999) -> list[Path]:
    """The demo's eval files, unless present: ``general.jsonl`` (a fixed set of the same tasks,
    seeded apart from any training file) and ``prompts.jsonl`` (a few questions answered at
    each evaluation)."""
    written = []
    general, prompts = eval_dir / "general.jsonl", eval_dir / "prompts.jsonl"
    if not general.exists():
        written.append(write_sample_chat(general, general_records, seed=seed))
    if not prompts.exists():
        prompts.write_bytes(b"".join(orjson.dumps({"messages": [{"role": "user", "content": q}]}) + b"\n"
                                     for q in PROMPTS))
        written.append(prompts)
    return written
