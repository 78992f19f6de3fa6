"""trainctl promote / discard on versions the regression gate held back (real trainctl processes)."""

from __future__ import annotations

from pathlib import Path

import orjson
from helpers.common import trainctl

from trainer.exitcodes import ExitCode
from trainer.spool import events
from trainer.spool.layout import open_base


def _version(models: Path, name: str, *, loss: float, reference: str | None, reference_loss: float = 3.0,
             held: bool = False) -> Path:
    """A version directory as consolidation leaves it (its metadata; weights are not needed here)."""
    directory = models / (".candidates" if held else "") / name
    directory.mkdir(parents=True)
    sets = {"general": {"loss": loss, "sha256": "g"}}
    references = {reference: {"general": {"loss": reference_loss, "sha256": "g"}}} if reference else {}
    passed = not held
    gate = {"passed": passed, "reason": None if passed else f"general: eval loss {loss} vs {reference_loss} in "
            f"{reference}", "compared_with": reference, "tolerance": 0.02, "references": references}
    (directory / "trainer_version.json").write_bytes(orjson.dumps(
        {"version": name, "eval": {"sets": sets, "samples": [], "gate": gate}}))
    return directory


def _base(tmp_path: Path) -> Path:
    base = tmp_path / "b"
    assert trainctl(base, "init").returncode == 0
    models = base / "models"
    _version(models, "v001", loss=3.0, reference=None)
    (models / "LATEST").write_text("v001\n")
    _version(models, "v002", loss=3.3, reference="v001", held=True)
    return base


def _events(base: Path, kind: str) -> list[dict]:
    return [e for e in events.read(open_base(base)).events if e["event"] == kind]


def test_status_names_the_held_back_version_and_why(tmp_path):
    base = _base(tmp_path)
    result = trainctl(base, "status")
    assert "held back   v002: general: eval loss 3.3 vs 3.0 in v001" in result.stdout
    assert orjson.loads(trainctl(base, "status", "--json").stdout)["held_back"][0]["version"] == "v002"


def test_promote_refuses_a_candidate_that_still_fails_the_gate_then_force_publishes_it(tmp_path):
    base = _base(tmp_path)
    refused = trainctl(base, "promote", "v002")
    assert refused.returncode == ExitCode.FAILED
    assert "v002 still fails the gate: general: eval loss 3.3000 vs 3.0000 in v001" in refused.stderr
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert (base / "models" / ".candidates" / "v002").is_dir() and not (base / "models" / "v002").exists()

    forced = trainctl(base, "promote", "--force", "v002")
    assert forced.returncode == 0, forced.stderr
    assert (base / "models" / "v002" / "trainer_version.json").exists()
    assert not (base / "models" / ".candidates" / "v002").exists()
    assert (base / "models" / "LATEST").read_text() == "v002\n"
    [promoted] = _events(base, "promoted")
    assert promoted["version"] == "v002" and promoted["previous"] == "v001" and promoted["forced"] is True
    assert "held back" not in trainctl(base, "status").stdout


def test_promote_without_force_passes_once_the_tolerance_lets_it_through(tmp_path):
    base = _base(tmp_path)
    (base / "config.toml").write_text("[eval]\ngate_tolerance = 0.15\n")
    result = trainctl(base, "promote", "v002")
    assert result.returncode == 0, result.stderr
    assert (base / "models" / "LATEST").read_text() == "v002\n"
    assert _events(base, "promoted")[0]["forced"] is False


def test_promote_refuses_when_a_newer_version_was_published_since(tmp_path):
    base = _base(tmp_path)
    _version(base / "models", "v003", loss=2.0, reference="v001")
    (base / "models" / "LATEST").write_text("v003\n")
    (base / "config.toml").write_text("[eval]\ngate_tolerance = 0.5\n")
    result = trainctl(base, "promote", "v002")
    assert result.returncode == ExitCode.FAILED
    assert "compared with v001, but the current version is now v003" in result.stderr


def test_discard_removes_the_candidate_and_says_so_in_the_history(tmp_path):
    base = _base(tmp_path)
    assert trainctl(base, "discard", "v002").returncode == 0
    assert not (base / "models" / ".candidates" / "v002").exists()
    assert [n.name for n in (base / "models" / ".candidates").iterdir()] == []
    assert _events(base, "discarded")[0]["version"] == "v002"
    assert (base / "models" / "LATEST").read_text() == "v001\n", "LATEST untouched"


def test_an_unknown_candidate_is_one_line_and_exit_4(tmp_path):
    base = _base(tmp_path)
    for command in ("promote", "discard"):
        result = trainctl(base, command, "v009")
        assert result.returncode == ExitCode.NO_SUCH_ITEM
        assert result.stderr.strip().splitlines() == [
            "trainctl: v009: no held-back candidate by that name (trainctl status lists them)"]
    assert trainctl(base, "promote", "v001").returncode == ExitCode.NO_SUCH_ITEM, "a published one is no candidate"
