"""How fast is trainer.intake.validate on a realistic chat file, next to what reading it costs anyway?

    .venv/bin/python bench/bench_validate.py [--mb 100] [--repeat 3]

Writes a chat JSONL file of about --mb megabytes into a temporary directory (removed after),
then times, median of --repeat runs each:

- validate_path: the real validator (parse, shape checks, sha256);
- baseline: `for line in open(path): json.loads(line)`, stdlib json, no checks at all;
- sha256: reading the file and hashing it, the floor any validator pays.

The file is read from the page cache every time, so this measures CPU, not the disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

# Run as a script, Python puts bench/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.intake.validate import validate_path  # noqa: E402

MB = 1_000_000
ENGLISH = (
    "the model learns from each example a little and the loss goes down slowly while the "
    "learning rate warms up then decays we checkpoint often because preemption happens so "
    "tokenizer attention gradient batch epoch adapter weights optimizer schedule it is you "
    "can't \"quoted\" `code()` x = 1; (see above) 42 3.14 e.g. I think yes no"
).split()
# Real chat logs are mostly English with a share of other scripts, which parse slower
# (a non-ASCII string cannot be copied byte for byte into a Python str).
OTHER = "réponse données modèle entraînement 数据 模型 训练 ответ модель данные".split()
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant that answers in one paragraph.",
    "You are a support agent for a software company. Be polite and precise.",
]


def paragraph(rng: random.Random, mean_words: float) -> str:
    # Log-normal lengths: most turns are short, a few are pages long, as in real chat logs.
    n = max(1, min(5000, int(rng.lognormvariate(0, 1.0) * mean_words)))
    words = ENGLISH + OTHER if rng.random() < 0.15 else ENGLISH
    text = " ".join(rng.choices(words, k=n))
    # Line breaks inside turns become \n escapes, which the parser must unescape.
    return text.replace(" so ", "\n\n").replace(" yes ", "\n- ")


def write_chat_file(path: Path, target_bytes: int, seed: int = 1) -> tuple[int, int]:
    """Write records until the file reaches target_bytes; return (bytes, records)."""
    rng = random.Random(seed)
    # A pool of turns reused across records: generating 100 MB of fresh words would take
    # longer than the benchmark, and repetition does not change parsing cost.
    users = [paragraph(rng, 30) for _ in range(4000)]
    answers = [paragraph(rng, 90) for _ in range(4000)]
    written = records = 0
    with open(path, "wb") as file:
        while written < target_bytes:
            messages = []
            if rng.random() < 0.5:
                messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            for _ in range(rng.randint(1, 4)):
                messages.append({"role": "user", "content": rng.choice(users)})
                messages.append({"role": "assistant", "content": rng.choice(answers)})
            line = orjson.dumps({"messages": messages}) + b"\n"
            file.write(line)
            written += len(line)
            records += 1
    return written, records


def run_validator(path: Path) -> None:
    report = validate_path(path, max_line_bytes=8 << 20, max_file_bytes=1 << 40)
    assert report.ok, report.describe(str(path))


def run_baseline(path: Path) -> None:
    with open(path, encoding="utf-8") as file:
        for line in file:
            json.loads(line)


def run_sha256(path: Path) -> None:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)


def median_seconds(fn, path: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100, help="size of the generated file, MB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the median counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        path = Path(tmp) / "chat.jsonl"
        size, records = write_chat_file(path, int(args.mb * MB))
        methods = [
            ("validate_path (orjson + shape checks + sha256)", run_validator),
            ("baseline: for line in open(): json.loads(line)", run_baseline),
            ("sha256 of the raw bytes", run_sha256),
        ]
        rates = {name: size / MB / median_seconds(fn, path, args.repeat) for name, fn in methods}

    baseline = rates[methods[1][0]]
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"file: {size / MB:.1f} MB of chat JSONL ({records:,} records, "
          f"{size / records:,.0f} bytes each on average), median of {args.repeat} runs, "
          f"Python {platform.python_version()}, orjson {orjson.__version__}, "
          f"{platform.machine()}, single-threaded")
    print()
    print("| method | MB/s | vs baseline |")
    print("|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
