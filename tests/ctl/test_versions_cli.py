"""trainctl versions / show vNNN over version metadata as it lies on disk: with eval results,
and from before lineage was kept (readers tolerate every key missing)."""

from __future__ import annotations

import orjson
from helpers.common import trainctl

from trainer.spool import control, versions


def _version(layout, name, meta, where="models"):
    path = layout.root / where / name
    path.mkdir(parents=True)
    (path / versions.VERSION_FILE).write_bytes(orjson.dumps(meta))


def test_versions_lists_eval_loss_when_present_and_tolerates_old_metadata(layout):
    _version(layout, "v001", {"global_step": 10, "parent": "base"})  # made before lineage and eval
    _version(layout, "v002", {"global_step": 20, "parent": "v001", "created_at": "2026-11-30T01:00:00+00:00",
                              "lineage": {"items": [{"id": "x", "tokens": 1200}], "line": 0, "steps": [11, 20]},
                              "eval": {"sets": {"holdout": {"loss": 4.16}}}})
    _version(layout, "v003", {"global_step": 30, "parent": "v002", "eval": {"sets": {"holdout": {"loss": 4.5}},
                                                                          "gate": {"passed": False}}},
             where="models/.candidates")
    (layout.root / "models" / "LATEST").write_text("v002\n")
    table = trainctl(layout.root, "versions")
    assert table.returncode == 0, table.stderr
    header, v1, v2, v3 = table.stdout.splitlines()
    assert "LOSS:holdout" in header
    assert v1.split()[:5] == ["v001", "10", "base", "-", "-"]
    assert v2.split()[:6] == ["v002", "20", "v001", "1", "1,200", "4.1600"] and v2.endswith("published (latest)")
    assert v3.startswith("v003") and "4.5000" in v3 and v3.endswith("held back")
    data = orjson.loads(trainctl(layout.root, "versions", "--json").stdout)
    assert data["latest"] == "v002" and [v["eval_loss"] for v in data["versions"]] == [{}, {"holdout": 4.16},
                                                                                      {"holdout": 4.5}]
    shown = trainctl(layout.root, "show", "v001")
    assert shown.returncode == 0 and "lineage:     not recorded" in shown.stdout


def test_rollback_refuses_a_version_that_is_not_published_and_leaves_no_request(layout):
    _version(layout, "v001", {"global_step": 10})
    refused = trainctl(layout.root, "rollback", "v004")
    assert refused.returncode == 4 and "no such version: 'v004' (published: v001" in refused.stderr
    assert control.read_requests(layout).rollback is None
    asked = trainctl(layout.root, "rollback", "v001", "--requeue")
    assert asked.returncode == 0 and "when the daemon next starts" in asked.stderr
    request = control.read_requests(layout).rollback
    assert request["version"] == "v001" and request["requeue"] is True and request["id"]
