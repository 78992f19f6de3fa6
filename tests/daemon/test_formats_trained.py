"""The data people already have, end to end: a ShareGPT file (with a tool call) and an Alpaca
file (with history) queued with trainctl and trained by the real daemon on the demo model."""

from __future__ import annotations

import random
import shutil

import pytest

pytest.importorskip("torch")

from helpers.common import trainctl, write_jsonl  # noqa: E402
from helpers.daemon_proc import DaemonProcess, metric_steps, small_config  # noqa: E402

from trainer.config import default_config_toml  # noqa: E402
from trainer.demo.sample_data import WORDS  # noqa: E402
from trainer.spool import queue  # noqa: E402
from trainer.spool.layout import init_base  # noqa: E402
from trainer.states import ItemState  # noqa: E402


def sharegpt(rng: random.Random) -> dict:
    a, b = rng.randrange(100), rng.randrange(100)
    turns = [{"from": "human", "value": f"What is {a} plus {b}?"}]
    if rng.random() < 0.5:
        turns += [{"from": "function_call", "value": f'{{"name": "add", "arguments": {{"a": {a}, "b": {b}}}}}'},
                  {"from": "observation", "value": str(a + b)}]
    turns.append({"from": "gpt", "value": f"{a} plus {b} is {a + b}."})
    return {"conversations": turns, "system": "You answer briefly.",
            "tools": '[{"name": "add", "parameters": {"type": "object"}}]'}


def alpaca(rng: random.Random) -> dict:
    words = rng.choices(WORDS, k=rng.randint(2, 8))
    record = {"instruction": "Reverse these words.", "input": " ".join(words), "output": " ".join(reversed(words))}
    if rng.random() < 0.3:
        record["history"] = [["Say hello.", "hello"]]
    return record


@pytest.fixture
def base(tmp_path, demo_model):
    layout, _ = init_base(tmp_path / "base", default_config_toml())
    # Rows long enough for the tool definitions, which the demo template gets as text in
    # every record's system turn (a few hundred of its byte-level tokens).
    layout.config_file.write_text(small_config(train={"max_length": 512}))
    shutil.copytree(demo_model, layout.root / "models" / "base")
    return layout


def test_a_sharegpt_and_an_alpaca_file_are_queued_as_such_and_trained(base, tmp_path):
    rng = random.Random(7)
    files = {"sharegpt": write_jsonl(tmp_path / "chats.jsonl", [sharegpt(rng) for _ in range(24)]),
             "alpaca": write_jsonl(tmp_path / "tasks.jsonl", [alpaca(rng) for _ in range(24)])}
    ids = {}
    for name, path in files.items():
        result = trainctl(base.root, "enqueue", str(path))
        assert result.returncode == 0, result.stderr
        ids[name] = result.stdout.strip()
        assert f"as {ids[name]} ({name}, 24 records, " in result.stderr
    daemon = DaemonProcess(base, "--exit-when-idle")
    try:
        assert daemon.finish() == 0, daemon.output()
    finally:
        daemon.kill()
    for name, item_id in ids.items():
        item = queue.find(base, item_id)
        assert item.state is ItemState.DONE, (name, item.meta.errors)
        assert item.meta.formats == (name,)
        tokens = item.meta.tokens
        # The statistics count the training share: the held-out records ([eval]) are apart.
        assert tokens["examples"] + tokens["held_out"] == 24 and tokens["no_target"] == 0
        assert tokens["target_tokens"] > 0
        assert metric_steps(base, item_id), f"{name}: no training step recorded"
