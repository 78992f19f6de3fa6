"""The regression gate: may a candidate version be published? A pure decision, torch-free.

The candidate's eval loss on every set is compared with each reference's on the same set
(same records: same sha256). A set where the loss rose by more than ``tolerance``
(relative: 0.02 lets 2 % through) fails the gate, and the reason names every such set with
both numbers. A set a reference was not evaluated on is not compared with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str | None
    compared_with: str | None  # the first reference (the current version, or "base")
    tolerance: float

    def record(self, references: dict[str, dict[str, dict]]) -> dict:
        """The version metadata's ``eval.gate``: the verdict and the numbers it compared."""
        return {"passed": self.passed, "reason": self.reason, "compared_with": self.compared_with,
                "tolerance": self.tolerance,
                "references": {name: {s: {"loss": n["loss"], "sha256": n.get("sha256")} for s, n in sets.items()}
                               for name, sets in references.items()}}


def relative_change(candidate: float, reference: float) -> float:
    return (candidate - reference) / reference if reference > 0 else 0.0


def decide(candidate: dict[str, dict], references: dict[str, dict[str, dict]], tolerance: float) -> Verdict:
    """``candidate``: set name -> numbers ({"loss", "sha256", ...}); ``references``: reference
    name ("v002", "base") -> the same, in the order they are named in the reason."""
    failures = []
    for reference, sets in references.items():
        for name, mine in sorted(candidate.items()):
            theirs = sets.get(name)
            if theirs is None or theirs.get("sha256") != mine.get("sha256"):
                continue
            change = relative_change(mine["loss"], theirs["loss"])
            if change > tolerance:
                failures.append(f"{name}: eval loss {mine['loss']:.4f} vs {theirs['loss']:.4f} in {reference} "
                                f"({change:+.1%}, tolerance {tolerance:.1%})")
    compared_with = next(iter(references), None)
    reason = "; ".join(failures) if failures else None
    return Verdict(not failures, reason, compared_with, tolerance)
