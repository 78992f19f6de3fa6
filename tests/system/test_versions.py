"""Versions end to end with the real daemon: lineage, trainctl versions / show, a manual
consolidation that publishes no duplicate, and rollback with --requeue."""

from __future__ import annotations

import pytest
from helpers.chaos_base import small_base
from helpers.common import trainctl
from helpers.daemon_proc import DaemonProcess, small_config

from trainer.config import load_config
from trainer.demo.sample_data import write_sample_chat
from trainer.intake.enqueue import enqueue_batch
from trainer.spool import control, events, queue, versions
from trainer.states import ItemState

pytest.importorskip("torch")

CONFIG = small_config(checkpoint={"every_steps": 50}, daemon={"consolidate_when_idle": True})


def _enqueue(layout, tmp_path, *names):
    paths = [write_sample_chat(tmp_path / f"{n}.jsonl", 12, seed=hash(n) % 1000) for n in names]
    return [q.meta.id for q in enqueue_batch(layout, paths, limits=load_config(layout.config_file).spool)]


def _lineage_ids(layout, name):
    return [i["id"] for i in versions.lineage_items(versions.read(versions.models_dir(layout), name))]


def test_versions_record_their_items_and_a_rollback_requeues_exactly_those_after_it(tmp_path, demo_model):
    layout = small_base(tmp_path / "base", demo_model)
    layout.config_file.write_text(CONFIG)
    models = versions.models_dir(layout)
    daemon = DaemonProcess(layout)
    try:
        daemon.wait_ready()
        [a] = _enqueue(layout, tmp_path, "a")
        daemon.wait_for(lambda: versions.names(models) == ["v001"], 120, "v001")
        # A consolidation asked for while items train: one version when they are done, not two.
        b, c = _enqueue(layout, tmp_path, "b", "c")
        control.send_consolidate(layout)
        daemon.wait_for(lambda: "v002" in versions.names(models) and not (layout.control / "consolidate.json").exists()
                        and queue.is_idle(layout), 120, "v002")
        # Asked again with nothing trained since: no second version at the same step.
        control.send_consolidate(layout)
        daemon.wait_for(lambda: not (layout.control / "consolidate.json").exists(), 60, "the request handled")
        assert versions.names(models) == ["v001", "v002"]
        assert _lineage_ids(layout, "v001") == [a] and _lineage_ids(layout, "v002") == [b, c]
        assert versions.read(models, "v002")["parent"] == "v001"

        table = trainctl(layout.root, "versions")
        assert table.returncode == 0 and "v002" in table.stdout and "v001" in table.stdout.splitlines()[2]
        shown = trainctl(layout.root, "show", "v002")
        assert shown.returncode == 0 and b in shown.stdout and "parent:      v001" in shown.stdout
        assert f"in version: v002" in trainctl(layout.root, "show", c).stdout
        assert trainctl(layout.root, "show", "v009").returncode == 4

        assert trainctl(layout.root, "rollback", "v001", "--requeue").returncode == 0
        daemon.wait_for(lambda: "v003" in versions.names(models) and queue.is_idle(layout), 180, "v003")
    finally:
        daemon.kill()
    v3 = versions.read(models, "v003")
    copies = _lineage_ids(layout, "v003")
    done = {i.id: i for i in queue.list_items(layout, [ItemState.DONE])}
    assert [done[i].meta.name for i in copies] == ["b.jsonl", "c.jsonl"] and set(copies).isdisjoint({b, c})
    assert v3["parent"] == "v001" and v3["lineage"]["steps"][0] == versions.read(models, "v001")["global_step"] + 1
    assert versions.names(models) == ["v001", "v002", "v003"], "versions after it stay"
    [rolled] = [e for e in events.read(layout).events if e["event"] == "rolled_back"]
    assert rolled["version"] == "v001" and rolled["requeued"] == copies
    assert not (layout.control / "rollback.json").exists()
