"""The acceptance gate: absolute thresholds on the test set, then the champion on the same test set."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from flightplan.config import HIGHER_IS_BETTER, AcceptanceSpec


def better(metric: str, challenger: float, reference: float, margin: float = 0.0) -> bool:
    """Whether ``challenger`` beats ``reference`` by at least ``margin`` in the metric's better direction."""
    if metric in HIGHER_IS_BETTER:
        return challenger >= reference + margin
    return challenger <= reference - margin


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reasons: list[str] = field(default_factory=list)  # why it was rejected; empty when accepted
    checks: list[dict[str, Any]] = field(default_factory=list)  # every comparison made, passed or not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    test_metrics: dict[str, float],
    acceptance: AcceptanceSpec,
    primary_metric: str,
    champion_metrics: dict[str, float] | None,
    side: str = "test",
) -> Verdict:
    """Accept when every threshold holds and, if there is a champion, the challenger beats its primary
    metric on the same rows (``side``) by the margin."""
    checks, reasons = [], []

    def check(name: str, passed: bool, value: float, bound: float, rule: str) -> None:
        checks.append({"check": name, "passed": passed, "value": value, "bound": bound, "rule": rule})
        if not passed:
            reasons.append(f"{name}: {value:.4f} does not meet {rule} {bound:.4f}")

    for metric, bound in sorted(acceptance.minimum.items()):
        value = test_metrics[metric]
        check(f"{side} {metric}", value >= bound, value, bound, ">=")
    for metric, bound in sorted(acceptance.maximum.items()):
        value = test_metrics[metric]
        check(f"{side} {metric}", value <= bound, value, bound, "<=")
    if champion_metrics is not None:
        value, reference = test_metrics[primary_metric], champion_metrics[primary_metric]
        margin = acceptance.champion_margin
        higher = better(primary_metric, 1.0, 0.0)
        check(
            f"{side} {primary_metric} vs the champion's {reference:.4f} (margin {margin:g})",
            better(primary_metric, value, reference, margin),
            value,
            reference + margin if higher else reference - margin,
            ">=" if higher else "<=",
        )
    return Verdict(accepted=not reasons, reasons=reasons, checks=checks)
