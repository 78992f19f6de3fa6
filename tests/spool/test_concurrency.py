"""Many processes at once on one spool: every item exactly once, nothing lost."""

from __future__ import annotations

import collections
import subprocess
import sys
import time

from helpers.common import REPO, write_jsonl

from trainer.spool import events, queue
from trainer.states import ItemState

ENQUEUER = """
import sys
from pathlib import Path
from trainer.intake import enqueue
from trainer.config import Config
from trainer.spool.layout import open_base
from trainer.states import Priority
layout = open_base(Path(sys.argv[1]))
src = Path(sys.argv[2])
priorities = list(Priority)
for n in range(int(sys.argv[3])):
    meta = enqueue.enqueue(layout, src, limits=Config().spool, priority=priorities[n % 3])
    print(meta.id, flush=True)
"""

MEDDLER = """
import sys, random
from pathlib import Path
from trainer.spool import queue
from trainer.config import Config
from trainer.errors import NoSuchItem, WrongState
from trainer.spool.layout import open_base
from trainer.states import ItemState, Priority
layout = open_base(Path(sys.argv[1]))
rng = random.Random(int(sys.argv[2]))
for _ in range(int(sys.argv[3])):
    pending = queue.list_items(layout, [ItemState.PENDING, ItemState.HELD])
    if not pending:
        continue
    item = rng.choice(pending)
    try:
        if item.state is ItemState.HELD:
            queue.release(layout, item.id)
        elif rng.random() < 0.5:
            queue.hold(layout, item.id)
        else:
            queue.move(layout, item.id, rng.choice(list(Priority)))
    except (NoSuchItem, WrongState):
        pass
"""


def test_concurrent_enqueuers_meddlers_and_a_consumer_lose_and_duplicate_nothing(layout, tmp_path, fake_daemon):
    src = write_jsonl(tmp_path / "one.jsonl", [{"text": "hello"}])
    fake_daemon(layout.root, "--consume")
    producers = [
        subprocess.Popen([sys.executable, "-c", ENQUEUER, str(layout.root), str(src), "40"],
                         stdout=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(4)
    ]
    meddlers = [
        subprocess.Popen([sys.executable, "-c", MEDDLER, str(layout.root), str(seed), "150"], cwd=REPO)
        for seed in range(2)
    ]
    enqueued = []
    for proc in producers:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        enqueued += out.split()
    for proc in meddlers:
        assert proc.wait(120) == 0
    for item in queue.list_items(layout, [ItemState.HELD]):  # meddlers may leave some held
        queue.release(layout, item.id)

    deadline = time.monotonic() + 60
    while queue.counts(layout)["done"] < len(enqueued):
        assert time.monotonic() < deadline, queue.counts(layout)
        time.sleep(0.05)

    assert len(enqueued) == 160 and len(set(enqueued)) == 160, "ids are unique"
    done = {item.id for item in queue.list_items(layout, [ItemState.DONE])}
    assert done == set(enqueued)
    assert queue.counts(layout)["pending"] == 0 and queue.counts(layout)["active"] == 0
    log = events.read(layout)
    claims = collections.Counter(e["id"] for e in log.events if e["event"] == "claimed")
    completions = collections.Counter(e["id"] for e in log.events if e["event"] == "done")
    assert set(claims.values()) == {1} and set(completions.values()) == {1}, "each trained exactly once"
    assert log.unreadable_lines == 0, "concurrent appends never interleave"
