"""How fast is trainer.intake.validate on a realistic file of each record format, next to what
reading it costs anyway?

    .venv/bin/python bench/bench_validate.py [--mb 100] [--repeat 3] [--lines chat|short|...|all] [--against REV]

Writes a JSONL file of about --mb megabytes per format into a temporary directory (removed
after): chat records (--lines chat, ~3 KB each, "messages"), the same conversations as
ShareGPT (sharegpt), as conversational prompt/completion (pair), with tool calls (tools),
Alpaca records (alpaca, ~2 KB), or short records (~80 bytes each, the worst case: the fixed
cost per line dominates) as prompt/completion (short) or Alpaca (short-alpaca); --lines all
(or a comma list) does each in turn, side by side. Then times, median of --repeat runs each,
the runs of all methods taking turns:

- validate_path: the real validator (parse, shape checks, one format per file, sha256);
- the same with record digests: what enqueue and the inbox run (a digest of every record,
  for the count of records seen before);
- with --against REV: validate_path as it was at git revision REV, side by side;
- baseline: `for line in open(path): json.loads(line)`, stdlib json, no checks at all;
- sha256: reading the file and hashing it, the floor any validator pays.

Each validate_path run is its own process (an old revision's package cannot be imported next
to the current one), timed from inside so start-up is not counted. The file is read from the
page cache every time, so this measures CPU, not the disk.
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

# Run as a script, Python puts bench/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def write_records(path: Path, target_bytes: int, make_record) -> tuple[int, int]:
    """Write make_record()'s records until the file reaches target_bytes; (bytes, records)."""
    written = records = 0
    with open(path, "wb") as file:
        while written < target_bytes:
            line = orjson.dumps(make_record()) + b"\n"
            file.write(line)
            written += len(line)
            records += 1
    return written, records


def write_chat_file(path: Path, target_bytes: int, seed: int = 1) -> tuple[int, int]:
    """Chat records (~3 KB) until the file reaches target_bytes; (bytes, records)."""
    rng = random.Random(seed)
    # A pool of turns reused across records: generating 100 MB of fresh words would take
    # longer than the benchmark, and repetition does not change parsing cost.
    users = [paragraph(rng, 30) for _ in range(4000)]
    answers = [paragraph(rng, 90) for _ in range(4000)]

    def chat() -> dict:
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": rng.choice(users)})
            messages.append({"role": "assistant", "content": rng.choice(answers)})
        return {"messages": messages}

    return write_records(path, target_bytes, chat)


def write_short_file(path: Path, target_bytes: int, seed: int = 1) -> tuple[int, int]:
    """Short prompt/completion records (~70 bytes) until the file reaches target_bytes."""
    rng = random.Random(seed)

    def short() -> dict:
        prompt = " ".join(rng.choices(ENGLISH, k=rng.randint(3, 8)))
        return {"prompt": prompt + "\n", "completion": rng.choice(ENGLISH)}

    return write_records(path, target_bytes, short)


def write_short_alpaca_file(path: Path, target_bytes: int, seed: int = 1) -> tuple[int, int]:
    """Short Alpaca records (~90 bytes): the worst case of a new format's full check."""
    rng = random.Random(seed)

    def short() -> dict:
        return {"instruction": " ".join(rng.choices(ENGLISH, k=rng.randint(3, 8))), "input": "",
                "output": rng.choice(ENGLISH)}

    return write_records(path, target_bytes, short)


def write_converted_file(path: Path, target_bytes: int, convert, seed: int = 1) -> tuple[int, int]:
    """The chat file's conversations, each converted to another format by convert(messages, rng)."""
    rng = random.Random(seed)
    users = [paragraph(rng, 30) for _ in range(4000)]
    answers = [paragraph(rng, 90) for _ in range(4000)]

    def record() -> dict:
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": rng.choice(users)})
            messages.append({"role": "assistant", "content": rng.choice(answers)})
        return convert(messages, rng)

    return write_records(path, target_bytes, record)


_FROM = {"system": "system", "user": "human", "assistant": "gpt"}
TOOLS = [{"type": "function", "function": {"name": "search", "description": "Search the docs.",
                                           "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]


def as_sharegpt(messages: list[dict], rng: random.Random) -> dict:
    return {"conversations": [{"from": _FROM[m["role"]], "value": m["content"]} for m in messages]}


def as_pair(messages: list[dict], rng: random.Random) -> dict:
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def as_alpaca(messages: list[dict], rng: random.Random) -> dict:
    turns = [m["content"] for m in messages if m["role"] != "system"]
    pairs = list(zip(turns[::2], turns[1::2]))
    record = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1]}
    if len(pairs) > 1:
        record["history"] = [list(pair) for pair in pairs[:-1]]
    return record


def with_tools(messages: list[dict], rng: random.Random) -> dict:
    # One tool round trip before the last answer, as function-calling data has.
    call = {"id": "call_1", "type": "function",
            "function": {"name": "search", "arguments": orjson.dumps({"query": messages[-2]["content"][:40]}).decode()}}
    messages = [*messages[:-1], {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": messages[-1]["content"][:200]},
                messages[-1]]
    return {"messages": messages, "tools": TOOLS}


WRITERS = {
    "chat": write_chat_file,
    "sharegpt": lambda path, size: write_converted_file(path, size, as_sharegpt),
    "pair": lambda path, size: write_converted_file(path, size, as_pair),
    "alpaca": lambda path, size: write_converted_file(path, size, as_alpaca),
    "tools": lambda path, size: write_converted_file(path, size, with_tools),
    "short": write_short_file,
    "short-alpaca": write_short_alpaca_file,
}


# Run in a child process with the tree to import from as argv[1]: prints the seconds taken.
_TIME_VALIDATOR = """
import sys, time
sys.path.insert(0, sys.argv[1])
from trainer.intake.validate import validate_stream
options = {"record_digests": True} if sys.argv[3] == "digests" else {}
with open(sys.argv[2], "rb", buffering=0) as file:
    start = time.perf_counter()
    report = validate_stream(file.read, max_line_bytes=8 << 20, max_file_bytes=1 << 40, **options)
    print(time.perf_counter() - start)
assert report.ok, report.describe(sys.argv[2])
"""


def validator_in(tree: Path, digests: bool = False):
    """A timing function for the validator of the package under tree."""
    def run(path: Path) -> float:
        out = subprocess.run([sys.executable, "-c", _TIME_VALIDATOR, str(tree), str(path),
                              "digests" if digests else "plain"],
                             check=True, capture_output=True, text=True).stdout
        return float(out.splitlines()[0])
    return run


def accepts(tree: Path, path: Path) -> bool:
    """Whether the validator under tree accepts the file (an older one refuses newer formats)."""
    try:
        validator_in(tree)(path)
    except subprocess.CalledProcessError:
        return False
    return True


def extract_revision(rev: str, into: Path) -> Path:
    """The trainer package as it was at git revision rev, unpacked under into."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "trainer"],
                             check=True, capture_output=True).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def timed(fn):
    """A timing function for fn(path), run in this process."""
    def run(path: Path) -> float:
        start = time.perf_counter()
        fn(path)
        return time.perf_counter() - start
    return run


def run_baseline(path: Path) -> None:
    with open(path, encoding="utf-8") as file:
        for line in file:
            json.loads(line)


def run_sha256(path: Path) -> None:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)


def median_seconds(methods: list[tuple[str, object]], path: Path, repeat: int) -> dict[str, float]:
    """Median seconds per method; the methods take turns, so a slow moment hits them all."""
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    for _ in range(repeat):
        for name, run in methods:
            times[name].append(run(path))
    return {name: statistics.median(runs) for name, runs in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100, help="size of each generated file, MB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the median counts")
    parser.add_argument("--lines", default="chat",
                        help=f"record format(s), comma-separated, or all: {', '.join(WRITERS)}")
    parser.add_argument("--against", metavar="REV",
                        help="also time the validator of this git revision, side by side")
    args = parser.parse_args()
    kinds = list(WRITERS) if args.lines == "all" else args.lines.split(",")
    unknown = [kind for kind in kinds if kind not in WRITERS]
    if unknown:
        parser.error(f"--lines: unknown {', '.join(unknown)}; choose from {', '.join(WRITERS)} or all")

    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"median of {args.repeat} runs, Python {platform.python_version()}, orjson {orjson.__version__}, "
          f"{platform.machine()}, single-threaded")
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        here = Path(__file__).resolve().parent.parent
        old = extract_revision(args.against, Path(tmp) / "old") if args.against else None
        summary = []
        for kind in kinds:
            path = Path(tmp) / f"{kind}.jsonl"
            size, records = WRITERS[kind](path, int(args.mb * MB))
            methods = [("validate_path (orjson + shape checks + sha256)", validator_in(here)),
                       ("validate_path with record digests (enqueue, inbox)", validator_in(here, digests=True))]
            if old is not None and accepts(old, path):
                methods.append((f"validate_path at {args.against}", validator_in(old)))
            methods += [
                ("baseline: for line in open(): json.loads(line)", timed(run_baseline)),
                ("sha256 of the raw bytes", timed(run_sha256)),
            ]
            rates = {name: size / MB / seconds
                     for name, seconds in median_seconds(methods, path, args.repeat).items()}
            path.unlink()
            baseline = rates["baseline: for line in open(): json.loads(line)"]
            print(f"\n{kind}: {size / MB:.1f} MB ({records:,} records, {size / records:,.0f} bytes each on average)\n")
            print("| method | MB/s | vs baseline |")
            print("|---|---:|---:|")
            for name, rate in rates.items():
                print(f"| {name} | {rate:,.0f} | {rate / baseline:.2f}x |")
            summary.append((kind, size / records, *(rates[name] for name, _ in methods[:2]), baseline))
    if len(summary) > 1:
        print("\n| format | bytes/record | validate MB/s | with digests MB/s | json.loads baseline MB/s |")
        print("|---|---:|---:|---:|---:|")
        for kind, per_record, plain, digests, baseline in summary:
            print(f"| {kind} | {per_record:,.0f} | {plain:,.0f} | {digests:,.0f} | {baseline:,.0f} |")


if __name__ == "__main__":
    main()
