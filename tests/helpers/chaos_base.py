"""What the chaos suites share: a small base dir on the tiny demo model, and a peak-RSS watch."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import orjson
import psutil

from helpers.daemon_proc import small_config
from trainer.config import default_config_toml
from trainer.spool.layout import Layout, init_base

SMALL_CONFIG = small_config(checkpoint={"every_steps": 50})  # a checkpoint at each item's end only


def small_base(root: Path, demo_model: Path, spool: str = "") -> Layout:
    """An initialised base dir at ``root`` with the demo model and SMALL_CONFIG (``spool``:
    extra lines for its [spool] table)."""
    layout, _ = init_base(root, default_config_toml())
    layout.config_file.write_text(SMALL_CONFIG + spool)
    shutil.copytree(demo_model, layout.root / "models" / "base")
    return layout


class PeakRss:
    """Samples a process's resident memory from a thread until stopped; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.peak = 0
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return  # it exited
            self._stop.wait(interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def clone_pending(layout: Layout, item_id: str, count: int, ids: list[str] | None = None) -> list[str]:
    """``count`` more pending items like ``item_id`` (same data, hard-linked; fresh ids, or
    ``ids``, and metadata), made without fsyncs: filling a queue of 10,000 through enqueue
    takes minutes."""
    import dataclasses

    from trainer.ids import new_id
    from trainer.spool import queue
    from trainer.states import Priority

    source = queue.find(layout, item_id)
    priorities = list(Priority)
    made = []
    for n in range(count):
        new = ids[n] if ids else new_id()
        priority = priorities[n % 3]
        path = layout.pending(priority) / new
        path.mkdir(mode=0o2770)
        os.link(source.data_path, path / "data.jsonl")
        meta = dataclasses.replace(source.meta, id=new, priority=priority)
        (path / "meta.json").write_bytes(meta.to_json())
        made.append(new)
    return made


def synthetic_events(layout: Layout, items: int, start: float, *, as_format_1: bool = False) -> list[str]:
    """Append the events ``items`` files make (enqueued, claimed, done), one a minute, to the
    monthly segments (``as_format_1``: to one events.jsonl, as format 1 kept it)."""
    ids = []
    logs: dict[str, object] = {}
    try:
        for n in range(items):
            at = start + n * 60
            item_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at)) + f".000000Z-{n:08x}"
            ids.append(item_id)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime(at))
            path = layout.old_events if as_format_1 else layout.events_dir / f"{stamp[:7]}.jsonl"
            if path not in logs:
                logs[path] = open(path, "ab")
            for event, details in (("enqueued", {"name": f"f{n}.jsonl", "priority": "normal", "records": 100,
                                                 "size": 40_000, "sha256": "ab" * 32}),
                                   ("claimed", {"priority": "normal", "attempts": 0}),
                                   ("done", {"steps": 25, "global_step": n * 25})):
                logs[path].write(orjson.dumps({"t": stamp, "event": event, "id": item_id, **details}) + b"\n")
    finally:
        for log in logs.values():
            log.close()
    return ids


# One enqueuer script for the load test and bench/chaos_load.py: half its files through
# trainctl enqueue, half dropped into the inbox.
ENQUEUER = """
import os, subprocess, sys
from pathlib import Path
base, drop, me, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for n in range(count):
    src = drop / f"e{me}-{n}.jsonl"
    src.write_bytes(b'{"text": "enqueuer %d file %d"}\\n' % (me, n))
    if n % 2:  # half through the inbox, as cp + mv would
        os.rename(src, base / "inbox" / src.name)
        print("inbox", src.name, flush=True)
    else:
        out = subprocess.run([sys.executable, "-m", "ctl", "--base-dir", str(base), "enqueue", str(src)],
                             capture_output=True, text=True, check=True).stdout.strip()
        print(out, src.name, flush=True)
"""
