"""The retrain decision: thresholds, the minimum rows, the performance rule in both metric directions, and
the cooldown that stops a retraining storm."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from flightplan.config import MonitoringSpec
from flightplan.monitoring.policy import Evidence, decide

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
SPEC = MonitoringSpec(min_rows=1000, min_labeled_rows=200, drift_share=0.5, max_metric_drop=0.05, cooldown_hours=24)
CALM = Evidence(
    rows=5000,
    labeled_rows=1000,
    drift_share=0.1,
    drifted=["temp"],
    metric="roc_auc",
    live_score=0.70,
    champion_score=0.72,
)


def test_a_calm_window_holds_and_says_why() -> None:
    decision = decide(CALM, SPEC, None, NOW)
    assert decision.outcome == "hold" and not decision.retrain
    assert "10% of the features and the model's output drift" in decision.reason and "roc_auc 0.7000" in decision.reason


def test_drift_over_the_share_retrains_and_names_the_features() -> None:
    drifting = replace(CALM, drift_share=0.5, drifted=["temp", "dewp", "humid"])
    decision = decide(drifting, SPEC, None, NOW)
    assert decision.retrain and "temp, dewp, humid" in decision.reason


def test_performance_under_the_champions_score_retrains_in_either_metric_direction() -> None:
    assert decide(replace(CALM, live_score=0.66), SPEC, None, NOW).retrain  # 0.06 under 0.72
    assert not decide(replace(CALM, live_score=0.68), SPEC, None, NOW).retrain  # 0.04 under
    losses = replace(CALM, metric="log_loss", champion_score=0.50)
    assert decide(replace(losses, live_score=0.56), SPEC, None, NOW).retrain
    assert not decide(replace(losses, live_score=0.54), SPEC, None, NOW).retrain


def test_too_few_rows_do_not_decide_and_too_few_labels_do_not_judge_performance() -> None:
    thin = decide(replace(CALM, rows=999, drift_share=1.0), SPEC, None, NOW)
    assert thin.outcome == "undecided" and "999" in thin.reason
    unlabeled = decide(replace(CALM, labeled_rows=199, live_score=0.1), SPEC, None, NOW)
    assert unlabeled.outcome == "hold" and "not judged" in unlabeled.reason


def test_the_cooldown_holds_a_second_retraining() -> None:
    drifting = replace(CALM, drift_share=0.9)
    held = decide(drifting, SPEC, NOW - timedelta(hours=23), NOW)
    assert held.outcome == "hold" and "cooldown of 24 h" in held.reason
    assert decide(drifting, SPEC, NOW - timedelta(hours=25), NOW).retrain
