"""The retrain decision: from what a monitoring run measured, the pipeline's thresholds and what is known of
its retrainings, whether to ask for another one, and why (in words a person reads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flightplan.config import MonitoringSpec
from flightplan.model.gate import better

RETRAIN, HOLD, UNDECIDED = "retrain", "hold", "undecided"


@dataclass(frozen=True)
class Evidence:
    rows: int
    labeled_rows: int
    drift_share: float  # of the drift report's columns: the model's features and its output
    drifted: list[str]
    metric: str  # the pipeline's primary metric
    live_score: float | None  # on the window's rows with ground truth
    champion_score: float | None  # what the model scored on its own test split


@dataclass(frozen=True)
class Decision:
    outcome: str  # retrain, hold or undecided (too few rows to judge)
    reason: str

    @property
    def retrain(self) -> bool:
        return self.outcome == RETRAIN

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "retrain": self.retrain}


def triggers(evidence: Evidence, spec: MonitoringSpec) -> list[str]:
    """The reasons to retrain found in the evidence (empty: the model holds)."""
    found = []
    if evidence.drift_share >= spec.drift_share:
        found.append(
            f"{evidence.drift_share:.0%} of the features and the model's output drift "
            f"(at least {spec.drift_share:.0%}): " + ", ".join(evidence.drifted)
        )
    live, champion = evidence.live_score, evidence.champion_score
    enough = evidence.labeled_rows >= spec.min_labeled_rows
    if (
        enough
        and live is not None
        and champion is not None
        and not better(evidence.metric, live, champion, -spec.max_metric_drop)
    ):
        found.append(
            f"{evidence.metric} on {evidence.labeled_rows} rows with ground truth is {live:.4f}, "
            f"worse than the model's test score {champion:.4f} by more than {spec.max_metric_drop}"
        )
    return found


@dataclass(frozen=True)
class Waiting:
    """What waits in Airflow when a check decides."""

    later_checks: int = 0  # later runs of the check queued (a backfill's days still to come): the last one asks
    retrainings: int = 0  # the pipeline's model_engineering runs queued or running


@dataclass(frozen=True)
class Retraining:
    """What a check knows of the pipeline's retrainings."""

    last_success: datetime | None = None  # when a retraining a check asked for last registered a version
    waiting: Waiting = field(default_factory=Waiting)


def decide(evidence: Evidence, spec: MonitoringSpec, retraining: Retraining, now: datetime) -> Decision:
    """Retrain when the evidence calls for it, unless a retraining is already on its way, a later check is
    queued (a backfill asks once, from its last day), or a retraining succeeded within ``cooldown_hours``: the
    cooldown counts from a new model, so a retraining that failed (or that the acceptance gate refused) lets the
    next check ask again."""
    if evidence.rows < spec.min_rows:
        judged = f"only {evidence.rows} rows in the window answered by the version judged"
        return Decision(UNDECIDED, f"{judged}, fewer than {spec.min_rows}")
    reasons = triggers(evidence, spec)
    if not reasons:
        performance = (
            f"{evidence.metric} {evidence.live_score:.4f} on {evidence.labeled_rows} rows with ground truth"
            if evidence.live_score is not None and evidence.labeled_rows >= spec.min_labeled_rows
            else f"{evidence.labeled_rows} rows with ground truth, fewer than {spec.min_labeled_rows}: not judged"
        )
        return Decision(HOLD, f"{evidence.drift_share:.0%} of the features and the model's output drift; {performance}")
    if retraining.waiting.retrainings:
        return Decision(HOLD, "; ".join(reasons) + "; but a retraining is already queued or running")
    if retraining.waiting.later_checks:
        return Decision(
            HOLD,
            "; ".join(reasons) + f"; but {retraining.waiting.later_checks} later check(s) are queued (a backfill): "
            "the last one judges its own window and asks",
        )
    last = retraining.last_success
    if last is not None and now - last < timedelta(hours=spec.cooldown_hours):
        return Decision(
            HOLD,
            "; ".join(reasons) + f"; but a retraining gave a new model at {last.isoformat(timespec='seconds')}, "
            f"within the cooldown of {spec.cooldown_hours:g} h",
        )
    return Decision(RETRAIN, "; ".join(reasons))
