"""Evaluation and the regression gate end to end: the real daemon on the demo model.

Clean demo data is published version after version with its eval numbers; a garbage
("poison") item makes the gate hold the next version back in models/.candidates with the
numbers in the reason, while LATEST stays and training goes on.
"""

from __future__ import annotations

import random
import shutil
import signal

import orjson
import pytest
from helpers.common import trainctl
from helpers.daemon_proc import DaemonProcess, small_config

pytest.importorskip("torch")

from trainer.config import load_config  # noqa: E402
from trainer.demo.sample_data import write_eval_files, write_sample_chat  # noqa: E402
from trainer.intake import enqueue  # noqa: E402
from trainer.spool import events, metrics, queue  # noqa: E402
from trainer.spool.layout import init_base  # noqa: E402
from trainer.states import ItemState  # noqa: E402

CONFIG = small_config(train={"max_length": 128, "micro_batch_size": 4, "learning_rate": 0.002, "deterministic": True},
                      daemon={"consolidate_when_idle": True}, checkpoint={"every_steps": 50},
                      eval={"holdout_fraction": 0.05, "max_new_tokens": 8})


def _poison(path, records: int, seed: int = 5):
    """Garbage: random letters asked, random symbols answered."""
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        for _ in range(records):
            fh.write(orjson.dumps({"prompt": "".join(rng.choice("abcdefghij ") for _ in range(30)),
                                   "completion": "".join(rng.choice("qxz0123456789#@!") for _ in range(50))}) + b"\n")
    return path


def _version(layout, name: str, held: bool = False) -> dict:
    directory = layout.root / "models" / (".candidates" if held else "") / name
    return orjson.loads((directory / "trainer_version.json").read_bytes())


@pytest.fixture
def base(tmp_path, demo_model):
    layout, _ = init_base(tmp_path / "base", CONFIG)
    shutil.copytree(demo_model, layout.root / "models" / "base")
    write_eval_files(layout.eval_dir, general_records=80)
    return layout


def test_clean_data_is_published_and_a_poisoned_item_is_held_back_with_its_numbers(base, tmp_path):
    limits = load_config(base.config_file).spool
    models = base.root / "models"
    daemon = DaemonProcess(base)
    try:
        daemon.wait_ready()
        clean = []
        for n, version in ((0, "v001"), (1, "v002")):
            path = write_sample_chat(tmp_path / f"clean-{n}.jsonl", 160, seed=n)
            clean.append(enqueue.enqueue(base, path, limits=limits).id)
            daemon.wait_for(lambda v=version: (models / v).is_dir() or (models / ".candidates" / v).is_dir(),
                            timeout=240, what=f"{version}")
            assert (models / version).is_dir(), f"clean data was held back: {_version(base, version, True)['eval']}"
            assert (models / "LATEST").read_text().strip() == version
        poison = enqueue.enqueue(base, _poison(tmp_path / "poison.jsonl", 160), limits=limits).id
        daemon.wait_for(lambda: (models / ".candidates" / "v003").is_dir(), timeout=240, what="v003 held back")
        daemon.wait_for(lambda: any(e["event"] == "held_back" for e in events.read(base).events), what="the event")
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.finish()

    # The clean versions: numbers on every set, the gate passed against the previous one.
    first, second = _version(base, "v001"), _version(base, "v002")
    assert set(second["eval"]["sets"]) == {"general", "holdout"}
    assert second["eval"]["gate"] == {**second["eval"]["gate"], "passed": True, "compared_with": "v001"}
    assert second["eval"]["sets"]["general"]["loss"] < first["eval"]["sets"]["general"]["loss"]
    assert [s["prompt"] for s in second["eval"]["samples"]][:1] == ["What is 12 plus 30?"]

    # The poisoned one: kept aside with the reason and the numbers; LATEST unchanged.
    held = _version(base, "v003", held=True)["eval"]
    assert held["gate"]["passed"] is False and held["gate"]["compared_with"] == "v002"
    general = held["sets"]["general"]["loss"]
    assert f"general: eval loss {general:.4f} vs {second['eval']['sets']['general']['loss']:.4f} in v002" \
        in held["gate"]["reason"]
    assert (models / "LATEST").read_text().strip() == "v002" and not (models / "v003").exists()
    [event] = [e for e in events.read(base).events if e["event"] == "held_back"]
    assert event["version"] == "v003" and event["reason"] == held["gate"]["reason"]
    status = trainctl(base.root, "status").stdout
    assert "held back   v003: general: eval loss" in status and "last eval" in status

    # Every item: its held-out numbers in its metadata, its metrics and the event log.
    for item_id in (*clean, poison):
        item = queue.find(base, item_id)
        assert item.state is ItemState.DONE and item.meta.tokens["held_out"] > 0
        assert item.meta.eval["set"] == "holdout" and item.meta.eval["eval_loss"] > 0
        [line] = metrics.read(base, item_id).evals
        assert line["eval_loss"] == item.meta.eval["eval_loss"]
        assert [e["eval_loss"] for e in events.read(base, item_id=item_id).events if e["event"] == "evaluated"] \
            == [line["eval_loss"]]

    # On demand, in trainctl's own child process: the same numbers the daemon recorded.
    result = trainctl(base.root, "eval", "--json", "v002", "v003", timeout=240)
    assert result.returncode == 0, result.stderr
    on_demand = {v["version"]: v for v in orjson.loads(result.stdout)["versions"]}
    assert on_demand["v002"]["sets"]["general"] == second["eval"]["sets"]["general"]
    assert on_demand["v003"]["sets"]["general"]["loss"] == general
