"""Hostile and broken input, the long version: a seeded flood into the inbox of the real daemon.

    .venv/bin/python bench/chaos_inbox.py [--inputs 300] [--huge-line-mb 200] [--seed N]

Drops --inputs regular files from tests/hostile.py (random bytes, invalid UTF-8, BOM, CRLF,
deep nesting, numbers for strings, NULs, empty files, ...; names with spaces, newlines,
unicode, escapes, leading dashes, invalid UTF-8), one file whose single line is
--huge-line-mb MB, every kind of non-regular entry (symlinks in and out, a hard link to a
file outside, a fifo, a device node, a directory, a socket), and a file still being appended
to after its rename, then runs the daemon until idle. Checks that it exits 0 with no
traceback, that every regular file ends done (valid) or failed with a reason naming it,
that every other entry is left as it was with one logged refusal, and reports the daemon's
peak RSS. Then the same files (but the huge one) go through one `trainctl enqueue` call.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers.chaos_base import PeakRss, small_base  # noqa: E402
from helpers.hostile import Input, fingerprint, make_regular, make_special, special_kinds_possible  # noqa: E402

from trainer.config import default_config_toml  # noqa: E402
from trainer.spool import queue  # noqa: E402
from trainer.spool.item import display_name  # noqa: E402
from trainer.spool.layout import init_base  # noqa: E402
from trainer.states import ItemState  # noqa: E402

GROWER = """
import os, sys, time
f = open(sys.argv[1], 'ab', buffering=0)
os.rename(sys.argv[1], sys.argv[2])
for i in range(2000):
    f.write(b'{"text": "line %d"}\\n' % i)
    if i % 100 == 0:
        time.sleep(0.05)
"""


def drop_all(inbox: Path, outside: Path, count: int, huge_mb: int, seed: int) -> list[Input]:
    rng = random.Random(seed)
    inputs = [make_regular(inbox, rng, n, 9 * 2**20) for n in range(count)]
    (inbox / "huge-line.jsonl").write_bytes(b'{"text": "' + b"a" * (huge_mb * 10**6) + b'"}\n')
    inputs.append(Input("huge-line.jsonl", "huge-line", "plain", valid=False, regular=True))
    inputs += [make_special(inbox, outside, kind, 10_000 + n) for n, kind in enumerate(special_kinds_possible())]
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=300)
    parser.add_argument("--huge-line-mb", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20261128)
    args = parser.parse_args()
    from helpers.daemon_proc import DaemonProcess

    from trainer.train.demo_model import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="chaos-inbox-"))
    try:
        layout = small_base(work / "base", build_demo_model(work / "model"))
        outside = work / "outside"
        outside.mkdir()
        inputs = drop_all(layout.inbox, outside, args.inputs, args.huge_line_mb, args.seed)
        before = {i.name: fingerprint(layout.inbox / i.name) for i in inputs if not i.regular}
        daemon = DaemonProcess(layout, "--exit-when-idle")
        rss = PeakRss(daemon.pid)
        started = time.monotonic()
        daemon.wait_ready()
        grower = subprocess.Popen([sys.executable, "-c", GROWER, str(layout.inbox / ".growing.jsonl"),
                                   str(layout.inbox / "growing.jsonl")])
        inputs.append(Input("growing.jsonl", "appended-after-rename", "plain", valid=True, regular=True))
        try:
            code = daemon.finish(timeout=6 * 3600)
        finally:
            grower.wait()
            daemon.kill()
            peak = rss.stop()
        elapsed = time.monotonic() - started

        found = {item.meta.name: item for item in queue.list_items(layout, list(ItemState))}
        outcome = collections.Counter()
        wrong = []
        for entry in inputs:
            if not entry.regular:
                same = fingerprint(layout.inbox / entry.name) == before[entry.name]
                outcome["left alone" if same else "TOUCHED"] += 1
                continue
            item = found.get(display_name(entry.name))
            if item is None:
                outcome["LOST"] += 1
                wrong.append(entry)
                continue
            outcome[item.state.value] += 1
            reason = item.meta.errors[-1].message if item.meta.errors else ""
            if entry.kind == "appended-after-rename":
                print(f"file appended to after its rename: {item.state.value} {reason[:100]}")
            elif item.state is ItemState.DONE and not entry.valid or (
                    item.state is ItemState.FAILED and (entry.valid or display_name(entry.name) not in reason)):
                wrong.append(entry)
        log = (layout.root.parent / "daemon.log").read_text(errors="replace")
        outside_ok = all(t.read_bytes() == b'{"text": "a file outside the base dir"}\n' for t in outside.iterdir())
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
        print("| inputs tried | done | failed with a reason | non-regular left alone | lost | wrong outcome "
              "| refusals logged | tracebacks | daemon exit | daemon peak RSS | time |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {len(inputs)} | {outcome['done']} | {outcome['failed']} | {outcome['left alone']} | "
              f"{outcome['LOST']} | {len(wrong)} | {log.count('not taking')} | {log.count('Traceback')} | "
              f"{code} | {peak / 2**20:.0f} MiB | {elapsed:.0f} s |")
        print(f"\nfiles outside the base dir unchanged: {outside_ok}; content kinds: "
              f"{dict(collections.Counter(i.kind for i in inputs))}")
        for entry in wrong[:10]:
            print("WRONG:", entry)

        # The same kinds of file through trainctl enqueue, in one all-or-nothing call.
        target, _ = init_base(work / "enqueue-base", default_config_toml())
        drop = work / "drop"
        drop.mkdir()
        rng = random.Random(args.seed + 1)
        batch = [make_regular(drop, rng, n, 9 * 2**20) for n in range(args.inputs)]
        batch += [make_special(drop, outside, kind, 20_000 + n) for n, kind in enumerate(special_kinds_possible())]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "ctl", "--base-dir", str(target.root), "enqueue", "--",
                                 *[str(drop / i.name) for i in batch]], capture_output=True, text=True, cwd=REPO)
        named = sum(display_name(str(drop / i.name)) in result.stderr for i in batch
                    if (i.regular and not i.valid) or (not i.regular and i.kind != "symlink-outside"))
        print(f"\n`trainctl enqueue` of {len(batch)} files in one call: exit {result.returncode} in "
              f"{time.monotonic() - started:.1f} s, {named} bad files named, traceback: "
              f"{'Traceback' in result.stderr}, queued: {queue.counts(target)['pending']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
