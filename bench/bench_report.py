"""The report page of a big base dir: a year of history, 10,000 items.

    .venv/bin/python bench/bench_report.py            # --items 10000 --steps 100 --days 365 --runs 5

Builds the base dir with the spool's own formats (tests/helpers/report_base.py: items as
the spool writes them, per-item metrics, monthly event segments, versions with evaluation
and lineage), without the daemon. Then, side by side in one run:

- the first ``trainctl report`` (no cache: every metrics file is read and reduced once),
- ``trainctl report`` again (the cache holds every unchanged file's reduction: what the
  daemon's periodic copy and every later call cost), median of ``--runs``,
- ``trainctl status`` on the same base dir, as the floor of a trainctl call,

and the page's size. Targets: the report in <= 2 s, the page <= 5 MB. Prints JSON; exit 1
if a target is missed.
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

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers import report_base  # noqa: E402

from trainer.config import default_config_toml  # noqa: E402
from trainer.spool.layout import init_base  # noqa: E402


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 3):
        raise SystemExit(f"{argv} exited {result.returncode}: {result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per done item")
    parser.add_argument("--days", type=float, default=365)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the base dir here and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        layout, _ = init_base(work / "base", default_config_toml())
        started = time.perf_counter()
        done, failed = int(args.items * 0.9), int(args.items * 0.01)
        report_base.build(layout, done=done, pending=args.items - done - failed, failed=failed, steps=args.steps,
                          days=args.days, versions=50)
        built_s = time.perf_counter() - started
        ctl = [sys.executable, "-m", "ctl", "--base-dir", str(layout.root)]
        page = layout.root / "report.html"
        cold = timed([*ctl, "report"])
        warm, status = [], []
        for _ in range(args.runs):  # round-robin: both see the same moments of the machine
            warm.append(timed([*ctl, "report"]))
            status.append(timed([*ctl, "status"]))
        size = page.stat().st_size
        event_bytes = sum(p.stat().st_size for p in layout.events_dir.glob("*.jsonl"))
        metric_bytes = sum(p.stat().st_size for p in (layout.root / "metrics").iterdir())
        result = {
            "items": args.items, "done": done, "steps_per_item": args.steps, "days": args.days,
            "event_log_bytes": event_bytes, "metrics_bytes": metric_bytes, "build_s": round(built_s, 1),
            "report_first_s": round(cold, 3), "report_median_s": round(statistics.median(warm), 3),
            "status_median_s": round(statistics.median(status), 3),
            "report_vs_status": round(statistics.median(warm) / statistics.median(status), 1),
            "page_bytes": size, "cache_bytes": (layout.run / "report-cache.json").stat().st_size,
            "load_average_1m": round(os.getloadavg()[0], 1),  # others' work on the machine skews every figure
        }
        result["ok"] = result["report_median_s"] <= 2.0 and size <= 5 * 1024 * 1024
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        sys.exit(0 if result["ok"] else 1)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
