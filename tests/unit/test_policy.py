"""The retrain decision: thresholds, the minimum rows, the performance rule in both metric directions, and
the cooldown that stops a retraining storm."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from flightplan.config import MonitoringSpec
from flightplan.monitoring.policy import Evidence, Retraining, Waiting, decide

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
SPEC = MonitoringSpec(min_rows=1000, min_labeled_rows=200, drift_share=0.5, max_metric_drop=0.05, cooldown_hours=24)
NONE_YET = Retraining()
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
    decision = decide(CALM, SPEC, NONE_YET, NOW)
    assert decision.outcome == "hold" and not decision.retrain
    assert "10% of the features and the model's output drift" in decision.reason and "roc_auc 0.7000" in decision.reason


def test_drift_over_the_share_retrains_and_names_the_features() -> None:
    drifting = replace(CALM, drift_share=0.5, drifted=["temp", "dewp", "humid"])
    decision = decide(drifting, SPEC, NONE_YET, NOW)
    assert decision.retrain and "temp, dewp, humid" in decision.reason


def test_performance_under_the_champions_score_retrains_in_either_metric_direction() -> None:
    assert decide(replace(CALM, live_score=0.66), SPEC, NONE_YET, NOW).retrain  # 0.06 under 0.72
    assert not decide(replace(CALM, live_score=0.68), SPEC, NONE_YET, NOW).retrain  # 0.04 under
    losses = replace(CALM, metric="log_loss", champion_score=0.50)
    assert decide(replace(losses, live_score=0.56), SPEC, NONE_YET, NOW).retrain
    assert not decide(replace(losses, live_score=0.54), SPEC, NONE_YET, NOW).retrain


def test_too_few_rows_do_not_decide_and_too_few_labels_do_not_judge_performance() -> None:
    thin = decide(replace(CALM, rows=999, drift_share=1.0), SPEC, NONE_YET, NOW)
    assert thin.outcome == "undecided" and "999" in thin.reason
    unlabeled = decide(replace(CALM, labeled_rows=199, live_score=0.1), SPEC, NONE_YET, NOW)
    assert unlabeled.outcome == "hold" and "not judged" in unlabeled.reason


def test_the_cooldown_counts_from_the_last_new_model_and_a_running_retraining_is_not_asked_twice() -> None:
    drifting = replace(CALM, drift_share=0.9)
    held = decide(drifting, SPEC, Retraining(last_success=NOW - timedelta(hours=23)), NOW)
    assert (
        held.outcome == "hold" and "cooldown of 24 h" in held.reason and "new model at 2026-11-21T13:00" in held.reason
    )
    assert decide(drifting, SPEC, Retraining(last_success=NOW - timedelta(hours=25)), NOW).retrain
    running = decide(drifting, SPEC, Retraining(NOW - timedelta(hours=25), Waiting(retrainings=1)), NOW)
    assert running.outcome == "hold" and "already queued or running" in running.reason


def test_a_backfill_asks_once_from_its_last_check() -> None:
    drifting = replace(CALM, drift_share=0.9)
    queued = decide(drifting, SPEC, Retraining(waiting=Waiting(later_checks=4)), NOW)
    assert queued.outcome == "hold" and "4 later check(s) are queued (a backfill)" in queued.reason
    assert decide(drifting, SPEC, Retraining(waiting=Waiting(later_checks=0)), NOW).retrain
