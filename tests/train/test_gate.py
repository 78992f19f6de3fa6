"""The regression gate's decision (trainer/gate.py): pure, on numbers."""

from __future__ import annotations

from trainer.gate import decide


def _sets(**losses: float) -> dict:
    return {name: {"loss": loss, "sha256": f"sha-{name}"} for name, loss in losses.items()}


def test_a_candidate_no_worse_than_its_parent_passes():
    verdict = decide(_sets(general=3.0, holdout=2.0), {"v002": _sets(general=3.0, holdout=2.1)}, 0.02)
    assert verdict.passed and verdict.reason is None and verdict.compared_with == "v002"


def test_a_rise_within_the_tolerance_passes_and_beyond_it_fails_with_both_numbers():
    assert decide(_sets(general=3.05), {"v002": _sets(general=3.0)}, 0.02).passed  # +1.7 %
    verdict = decide(_sets(general=3.3, holdout=2.0), {"v002": _sets(general=3.0, holdout=2.0)}, 0.02)
    assert not verdict.passed
    assert verdict.reason == "general: eval loss 3.3000 vs 3.0000 in v002 (+10.0%, tolerance 2.0%)"


def test_every_failing_set_and_reference_is_named():
    verdict = decide(_sets(a=2.0, b=2.0), {"v003": _sets(a=1.0, b=1.0), "base": _sets(a=1.5)}, 0.02)
    assert not verdict.passed
    assert verdict.reason.count("in v003") == 2 and "a: eval loss 2.0000 vs 1.5000 in base" in verdict.reason


def test_a_set_whose_records_changed_is_not_compared():
    candidate = _sets(general=5.0)
    reference = {"v001": {"general": {"loss": 1.0, "sha256": "another-version-of-the-set"}}}
    assert decide(candidate, reference, 0.02).passed


def test_no_reference_passes_and_compares_with_nothing():
    verdict = decide(_sets(general=9.0), {}, 0.02)
    assert verdict.passed and verdict.compared_with is None


def test_the_record_keeps_the_reference_numbers_for_a_later_decision():
    references = {"v001": _sets(general=3.0)}
    record = decide(_sets(general=3.3), references, 0.02).record(references)
    assert record["passed"] is False and record["tolerance"] == 0.02
    assert decide(_sets(general=3.3), record["references"], 0.2).passed, "decided again with a looser tolerance"
