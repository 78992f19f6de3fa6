"""Load, the long version: a big queue, a long event log, and enqueuers racing the real daemon.

    .venv/bin/python bench/chaos_load.py [--items 10000] [--days 1,30,365] [--enqueuers 8]
                                         [--files 100] [--runs 11] [--skip-daemon]

1. trainctl with --items pending items: status, list, enqueue of one more file, show, history
   (median wall time of real subprocesses, measured as bench/bench_ctl.py does);
2. the event log after --days days at one file a minute (enqueued, claimed, done: the events a
   trained file makes; per-step figures go to metrics/ID.jsonl, never to the event log), kept
   as format 1 did (one events.jsonl) and in monthly segments: its size, and status, history
   --since 1h / 1d, history --id, show and history -n 20 on it; then the one-time upgrade of
   the format-1 log (its duration, and every event read back once);
3. --enqueuers processes each giving --files files (half with trainctl enqueue, half through
   the inbox) while the real daemon (tiny demo model) trains: every file trained exactly
   once according to the event log, ids unique, nothing lost; the daemon's peak RSS.
Prints markdown tables for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from bench_ctl import trainctl, walls  # noqa: E402
from helpers.chaos_base import ENQUEUER, PeakRss, clone_pending, small_base, synthetic_events  # noqa: E402

from trainer.config import Config, default_config_toml  # noqa: E402
from trainer.eventkinds import Event  # noqa: E402
from trainer.intake import enqueue  # noqa: E402
from trainer.spool import events, queue  # noqa: E402
from trainer.spool.layout import init_base  # noqa: E402
from trainer.states import ItemState  # noqa: E402


def big_queue(work: Path, items: int, runs: int) -> None:
    layout, _ = init_base(work / "queue", default_config_toml())
    sample = work / "sample.jsonl"
    sample.write_text('{"text": "hello"}\n')
    first = enqueue.enqueue(layout, sample, limits=Config().spool).id
    clone_pending(layout, first, items - 1)
    many = f"{items:,} pending"
    medians = walls({
        "`python -c pass` (the floor: interpreter start-up)": [sys.executable, "-c", "pass"],
        f"`trainctl status`, {many}": trainctl(layout.root, "status"),
        f"`trainctl status --json`, {many}": trainctl(layout.root, "status", "--json"),
        f"`trainctl list`, {many}": trainctl(layout.root, "list"),
        f"`trainctl show ID`, {many}": trainctl(layout.root, "show", first),
        f"`trainctl enqueue` of one more file, {many}": trainctl(layout.root, "enqueue", "-q", str(sample)),
    }, runs)
    print("| command | median wall time |\n|---|---:|")
    for label, seconds in medians.items():
        print(f"| {label} | {seconds * 1000:.0f} ms |")
    print()


def long_log(work: Path, days: list[int], runs: int) -> None:
    """The same log as format 1 kept it (one events.jsonl, read by this release as it is until
    the daemon upgrades it) and in monthly segments; then the one-time upgrade of the first."""
    columns = {"status": "`status`", "since 1h": "`history --since 1h`", "since 1d": "`history --since 1d`",
               "id": "`history --id ID` (half-way)", "show new": "`show ID` (a day old)",
               "show mid": "`show ID` (half-way)", "last": "`history -n 20`"}
    print("| event log | kept as | lines | size | " + " | ".join(columns.values()) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(columns))
    upgrades = []
    for day_count in days:
        start = time.time() - day_count * 86_400
        for as_format_1 in (True, False):
            layout, _ = init_base(work / f"log{day_count}-{as_format_1}", default_config_toml())
            if as_format_1:
                layout.format_file.write_bytes(b'{"format":"trainer-base","version":1}\n')
            ids = synthetic_events(layout, day_count * 1_440, start, as_format_1=as_format_1)
            recent, middle = ids[max(0, len(ids) - 1_440)], ids[len(ids) // 2]
            items_for(layout, [recent, middle])  # show needs the items themselves
            size = sum(p.stat().st_size for p in [layout.old_events, *layout.events_dir.glob("*.jsonl")] if p.exists())
            commands = {
                "status": trainctl(layout.root, "status"),
                "since 1h": trainctl(layout.root, "history", "--since", "1h"),
                "since 1d": trainctl(layout.root, "history", "--since", "1d"),
                "id": trainctl(layout.root, "history", "--id", middle),
                "show new": trainctl(layout.root, "show", recent),
                "show mid": trainctl(layout.root, "show", middle),
                "last": trainctl(layout.root, "history", "-n", "20"),
            }
            for label, argv in commands.items():  # walls() does not look at exit codes
                assert subprocess.run(argv, capture_output=True).returncode in (0, 3), label
            medians = walls(commands, max(3, runs // (3 if day_count > 100 else 1)))
            kept = "format 1: one `events.jsonl`" if as_format_1 else "monthly segments"
            print(f"| {day_count} day{'s' if day_count > 1 else ''} at 1 file/min | {kept} | {len(ids) * 3:,} | "
                  f"{size / 2**20:.1f} MiB | " + " | ".join(f"{medians[k] * 1000:,.0f} ms" for k in columns) + " |")
            if as_format_1:
                upgrades.append((day_count, size, *timed_upgrade(layout)))
            shutil.rmtree(layout.root)
    print("\n| format-1 log upgraded (`trainer run`, once) | size | upgrade | every event read back, once |")
    print("|---|---:|---:|---|")
    for day_count, size, seconds, same in upgrades:
        print(f"| {day_count} day{'s' if day_count > 1 else ''} | {size / 2**20:.1f} MiB | {seconds:.1f} s | "
              f"{'yes' if same else 'NO'} |")
    print()


def items_for(layout, ids: list[str]) -> None:
    """Pending items with these ids (the synthetic log's), for show to find."""
    sample = layout.root.parent / "one.jsonl"
    sample.write_text('{"text": "hello"}\n')
    first = enqueue.enqueue(layout, sample, limits=Config().spool).id
    clone_pending(layout, first, len(ids), ids=ids)


def timed_upgrade(layout) -> tuple[float, bool]:
    from trainer.spool import upgrade

    before = events.read(layout)
    started = time.perf_counter()
    upgrade.upgrade(layout)
    seconds = time.perf_counter() - started
    after = events.read(layout)
    return seconds, (after.events, after.unreadable_lines) == (before.events, before.unreadable_lines)


def race_the_daemon(work: Path, enqueuers: int, files: int) -> None:
    from helpers.daemon_proc import DaemonProcess

    from trainer.train.demo_model import build_demo_model

    layout = small_base(work / "race" / "base", build_demo_model(work / "model"))
    drop = work / "drop"
    drop.mkdir()
    daemon = DaemonProcess(layout)
    rss = PeakRss(daemon.pid)
    try:
        daemon.wait_ready()
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-c", ENQUEUER, str(layout.root), str(drop), str(me), str(files)],
                                  stdout=subprocess.PIPE, text=True, cwd=REPO) for me in range(enqueuers)]
        given = []
        for proc in procs:
            out, _ = proc.communicate()
            assert proc.returncode == 0
            given += [line.split() for line in out.splitlines()]
        enqueued_s = time.monotonic() - started
        total = len(given)
        daemon.wait_for(lambda: queue.counts(layout)["done"] + queue.counts(layout)["failed"] >= total,
                        timeout=24 * 3600, what="every file trained")
        trained_s = time.monotonic() - started
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.finish(120)
    finally:
        daemon.kill()
        peak = rss.stop()
    done = queue.list_items(layout, [ItemState.DONE])
    ids = [item.id for item in done]
    log = events.read(layout)
    counts = {kind: collections.Counter(e["id"] for e in log.events if e["event"] == kind.value)
              for kind in (Event.ENQUEUED, Event.CLAIMED, Event.DONE)}
    exactly_once = all(c == collections.Counter(ids) for c in counts.values())
    lost = sorted(name for _, name in given) != sorted(item.meta.name for item in done)
    print("| enqueuers x files | given | trained | failed | ids unique | each enqueued, claimed, done once "
          "| lost | all given in | all trained in | daemon exit | daemon peak RSS |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
    print(f"| {enqueuers} x {files} | {total} | {len(done)} | {queue.counts(layout)['failed']} | "
          f"{'yes' if len(set(ids)) == len(ids) else 'NO'} | {'yes' if exactly_once else 'NO'} | "
          f"{'SOME' if lost else 0} | {enqueued_s:.0f} s | {trained_s:.0f} s | {code} | {peak / 2**20:.0f} MiB |")
    size = sum(p.stat().st_size for p in layout.events_dir.glob("*.jsonl"))
    print(f"\n(unreadable event lines: {log.unreadable_lines}; event log {size:,} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--days", default="1,30,365")
    parser.add_argument("--enqueuers", type=int, default=8)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--skip-daemon", action="store_true", help="parts 1 and 2 only (no torch needed)")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "trainer"), str(REPO / "ctl")], check=True)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
    work = Path(tempfile.mkdtemp(prefix="chaos-load-"))
    try:
        big_queue(work, args.items, args.runs)
        long_log(work, [int(d) for d in args.days.split(",")], args.runs)
        if not args.skip_daemon:
            race_the_daemon(work, args.enqueuers, args.files)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
