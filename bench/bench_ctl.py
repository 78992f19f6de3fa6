"""trainctl's speed, measured side by side in one run.

    .venv/bin/python bench/bench_ctl.py [--items 10000] [--files 1000] [--runs 15] [--against REV] [--rounds 5]

- `trainctl status` and `trainctl list` wall time (real subprocesses) with 0 and with
  --items pending items, next to `python -c pass` and a bare import of trainctl's
  dependencies (click + orjson: what issue 14 names) as the floor, and the same import with
  the garbage collector handled as trainctl's entry point handles it (ctl/entry.py);
- the target: `trainctl status` at --items pending over the bare import, as a ratio (and
  over the second floor: what trainctl's own modules and work add, like for like);
- with --against REV: `trainctl status` as it was at git revision REV, in the same rounds
  (both started the same way, `python -c` with each tree's entry point: `ctl.entry.main`, or
  `ctl.cli.main` in a tree from before it);
- `trainctl enqueue` of --files small valid files in one call: per-file cost, next to a
  plain copy of the same files with fsync (the floor for crash-safe queueing);
- with --against REV: `trainctl enqueue` as it was at git revision REV, side by side with
  today's (--rounds rounds, alternating which goes first, each into a fresh base dir; and one
  file into the base dir of --items items): the ratio is what a change cost enqueue.
Prints a markdown table to paste into docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.config import Config, default_config_toml  # noqa: E402
from trainer.intake import enqueue  # noqa: E402
from trainer.spool.layout import init_base  # noqa: E402
from trainer.states import Priority  # noqa: E402


# The floor as trainctl's entry point loads it: the collector off while the modules load, then frozen.
FROZEN = "import click+orjson, the collector off while loading, then frozen (as ctl/entry.py does)"


def walls(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median wall seconds of each command, run round-robin so that the machine's drift
    (a noisy neighbour, a warming cache) weighs on every command alike."""
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def trainctl(base: Path, *args: str) -> list[str]:
    """What people run: the installed ``trainctl`` script (``python -m ctl`` adds runpy's
    ~3 ms), or ``-m ctl`` where the venv has no script."""
    script = Path(sys.executable).parent / "trainctl"
    entry = [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "ctl"]
    return [*entry, "--base-dir", str(base), *args]


def extract_revision(rev: str, into: Path) -> Path:
    """The packages as they were at git revision rev, unpacked (and byte-compiled) under into
    (once: status and enqueue are both compared against the same tree)."""
    if into.exists():
        return into
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "trainer", "ctl"],
                             check=True, capture_output=True).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into)], check=True)
    return into


# Each tree's own entry point: ctl.entry where it has one, ctl.cli's main before that.
START = "try:\n    from ctl.entry import main\nexcept ImportError:\n    from ctl.cli import main\nmain()"


def started_in(tree: Path, base: Path, *args: str) -> list[str]:
    """trainctl run from the packages in ``tree`` (first on sys.path: the current directory)."""
    return ["env", "-C", str(tree), sys.executable, "-c", START, "--base-dir", str(base), *args]


def timed_enqueue(tree: Path, base: Path, files: list[Path]) -> float:
    start = time.perf_counter()
    result = subprocess.run([*started_in(tree, base, "enqueue", "-q"), *map(str, files)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    return elapsed


def compare_enqueue(rev: str, work: Path, files: list[Path], full: Path, sample: Path, rounds: int) -> None:
    """Today's enqueue against rev's, alternating, each batch into its own fresh base dir."""
    trees = {"today": REPO, rev: extract_revision(rev, work / "old")}
    batch: dict[str, list[float]] = {name: [] for name in trees}
    single: dict[str, list[float]] = {name: [] for name in trees}
    for n in range(rounds):
        order = list(trees) if n % 2 == 0 else list(reversed(trees))
        for name in order:
            base = work / f"round-{n}-{name.replace('/', '_')}"
            fill(base, 0, sample)
            batch[name].append(timed_enqueue(trees[name], base, files))
            single[name].append(timed_enqueue(trees[name], full, [files[n % len(files)]]))
    print(f"\n| enqueue, median of {rounds} rounds | today | at {rev} | today / {rev} |")
    print("|---|---|---|---|")
    for label, runs in ((f"{len(files):,} files, one call, fresh base dir", batch),
                        ("1 file into the base dir of the items above", single)):
        now, then = statistics.median(runs["today"]), statistics.median(runs[rev])
        print(f"| {label} | {now * 1000:.0f} ms | {then * 1000:.0f} ms | {now / then:.2f}x |")


def fill(base: Path, items: int, sample: Path) -> None:
    layout, _ = init_base(base, default_config_toml())
    limits = Config().spool
    priorities = list(Priority)
    for n in range(items):
        enqueue.enqueue(layout, sample, limits=limits, priority=priorities[n % 3])


def make_files(directory: Path, count: int) -> list[Path]:
    directory.mkdir()
    paths = []
    for n in range(count):
        path = directory / f"f{n:05d}.jsonl"
        path.write_text(f'{{"messages": [{{"role": "user", "content": "q{n}"}}, '
                        f'{{"role": "assistant", "content": "a{n}"}}]}}\n' * 5)
        paths.append(path)
    return paths


def copy_with_fsync(paths: list[Path], dest: Path) -> None:
    dest.mkdir()
    for path in paths:
        target = dest / path.name
        shutil.copyfile(path, target)
        fd = os.open(target, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--against", metavar="REV", help="also time status and enqueue as they were at this git revision")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the enqueue --against comparison")
    args = parser.parse_args()
    # Measure start-up as an installed copy runs: with bytecode cached. (Where
    # PYTHONDONTWRITEBYTECODE is set, every run would otherwise recompile the project.)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "trainer"), str(REPO / "ctl")], check=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ctl-"))
    try:
        sample = work / "sample.jsonl"
        sample.write_text('{"text": "hello"}\n')
        empty, full = work / "empty", work / "full"
        fill(empty, 0, sample)
        start = time.perf_counter()
        fill(full, args.items, sample)
        fill_s = time.perf_counter() - start

        many = f"{args.items:,} pending"
        commands = {
            "`python -c pass`": [sys.executable, "-c", "pass"],
            "import click+orjson (trainctl's dependencies)": [sys.executable, "-c", "import click, orjson"],
            FROZEN: [sys.executable, "-c", "import gc; gc.disable(); import click, orjson; gc.freeze(); gc.enable()"],
            "`trainctl status`, 0 pending": trainctl(empty, "status"),
            f"`trainctl status`, {many}": trainctl(full, "status"),
            f"`trainctl status --json`, {many}": trainctl(full, "status", "--json"),
            f"`trainctl list`, {many}": trainctl(full, "list"),
        }
        if args.against:
            old = extract_revision(args.against, work / "old")
            commands[f"`trainctl status`, {many}, started with -c"] = started_in(REPO, full, "status")
            commands[f"`trainctl status`, {many}, at {args.against}, started with -c"] = started_in(old, full, "status")
        medians = walls(commands, args.runs)
        floor = medians["`python -c pass`"]
        rows = list(medians.items())
        deps = medians["import click+orjson (trainctl's dependencies)"]
        ratio = medians[f"`trainctl status`, {many}"] / deps
        like_for_like = medians[f"`trainctl status`, {many}"] / medians[FROZEN]

        files = make_files(work / "files", args.files)
        start = time.perf_counter()
        copy_with_fsync(files, work / "copied")
        copy_s = time.perf_counter() - start
        start = time.perf_counter()
        result = subprocess.run(trainctl(empty, "enqueue", "-q", *map(str, files)), cwd=REPO)
        enqueue_s = time.perf_counter() - start
        assert result.returncode == 0

        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
        print("| what | median wall time | vs `python -c pass` |")
        print("|---|---|---|")
        for label, seconds in rows:
            print(f"| {label} | {seconds * 1000:.0f} ms | {seconds / floor:.1f}x |")
        print()
        print("| enqueue | total | per file | vs copy+fsync |")
        print("|---|---|---|---|")
        print(f"| copy + fsync, {args.files:,} files (floor) | {copy_s:.2f} s | {copy_s / args.files * 1000:.2f} ms | 1.0x |")
        print(f"| `trainctl enqueue` of {args.files:,} files, one call | {enqueue_s:.2f} s | "
              f"{enqueue_s / args.files * 1000:.2f} ms | {enqueue_s / copy_s:.1f}x |")
        print(f"\n`trainctl status` at {many} / `import click, orjson`: {ratio:.2f}x (target <= 1.30x: "
              f"{'met' if ratio <= 1.3 else 'MISSED'}); over the same import with the garbage collector "
              f"handled as trainctl's entry point handles it (ctl/entry.py): {like_for_like:.2f}x")
        print(f"\n(filling {args.items:,} items through the library took {fill_s:.1f} s, "
              f"{fill_s / max(args.items, 1) * 1000:.2f} ms per item)")
        if args.against:
            compare_enqueue(args.against, work, files, full, sample, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
