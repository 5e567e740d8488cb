"""The live gate's paired bootstrap: a candidate surely better by the margin passes; one as good, one
better by less than the margin, and a worse one do not; a metric where lower is better counts its gain
downwards; the same rows give the same test."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from flightplan.deployment.live import PairedTest, Score, logged_answers, paired_bootstrap
from flightplan.deployment.stages import ChallengerRefused
from flightplan.features import FeatureMap
from flightplan.model.evaluate import METRICS

ROWS = 2000


def scored(task: str, metric: str, y: np.ndarray, prediction: np.ndarray, cut: float = 0.5) -> Score:
    """A version's metric on a draw of rows, as the live gate builds it."""
    return lambda draw: METRICS[task][metric](y[draw], prediction[draw], cut)


LABELS = (np.random.default_rng(0).random(ROWS) < 0.3).astype(np.float32)


def binary_answers(noise: float, seed: int) -> np.ndarray:
    """P(1) answers for LABELS that rank them well when ``noise`` is small."""
    return 1 / (1 + np.exp(-(4 * (LABELS - 0.5) + np.random.default_rng(seed).normal(0, noise, ROWS))))


def roc_auc_test(candidate_noise: float, champion_noise: float, margin: float = 0.0) -> PairedTest:
    candidate = binary_answers(candidate_noise, 1)
    champion = binary_answers(champion_noise, 1 if candidate_noise == champion_noise else 2)
    scores = (scored("binary", "roc_auc", LABELS, candidate), scored("binary", "roc_auc", LABELS, champion))
    return paired_bootstrap("roc_auc", scores, ROWS, margin, 0.95, resamples=450)


def test_a_surely_better_candidate_passes_and_the_test_says_by_how_much() -> None:
    test = roc_auc_test(candidate_noise=2.0, champion_noise=4.0)
    assert test.passed and test.gain > 0.05 and 0 < test.gain_lower < test.gain
    assert test.p_value < 0.01 and test.rows == ROWS and test.resamples == 450
    assert test.candidate - test.champion == pytest.approx(test.gain)


def test_an_equal_a_worse_and_a_not_better_enough_candidate_fail() -> None:
    same = roc_auc_test(3.0, 3.0)
    assert not same.passed and same.gain == 0 and same.p_value == 1
    worse = roc_auc_test(4.0, 2.0)
    assert not worse.passed and worse.gain < 0 and worse.p_value > 0.99
    better = roc_auc_test(2.0, 4.0)
    short_of_margin = roc_auc_test(2.0, 4.0, margin=better.gain + 0.01)
    assert not short_of_margin.passed and short_of_margin.p_value > 0.5


def test_for_a_lower_is_better_metric_the_gain_is_counted_downwards() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(0, 1, ROWS)
    close, far = y + rng.normal(0, 0.1, ROWS), y + rng.normal(0, 1.0, ROWS)
    scores = (scored("regression", "rmse", y, close), scored("regression", "rmse", y, far))
    test = paired_bootstrap("rmse", scores, ROWS, 0.0, 0.95, resamples=200)
    assert test.passed and test.candidate < test.champion and test.gain == pytest.approx(test.champion - test.candidate)
    assert paired_bootstrap("rmse", scores, ROWS, 0.0, 0.95, resamples=200) == test


def test_rows_of_one_class_or_no_row_cannot_judge() -> None:
    y = np.zeros(50, dtype=np.float32)
    scores = (scored("binary", "roc_auc", y, np.full(50, 0.2)), scored("binary", "roc_auc", y, np.full(50, 0.3)))
    with pytest.raises(ChallengerRefused, match="undefined"):
        paired_bootstrap("roc_auc", scores, 50, 0.0, 0.95, 50)
    with pytest.raises(ChallengerRefused, match="no labeled live row"):
        paired_bootstrap("roc_auc", scores, 0, 0.0, 0.95, 50)


def test_a_multiclass_versions_answers_are_one_hot_and_a_class_it_does_not_know_is_named() -> None:
    """The log keeps a multiclass version's chosen class only: its answers are scored as a one-hot of that class,
    and a class missing from the version's map stops the gate with its name, not as another class's column."""
    feature_map = FeatureMap(features=[], label="carrier", task="multiclass", classes=["AA", "B6", "UA"])
    texts = [json.dumps(value) for value in ("UA", "AA", "B6")]
    pairs = pa.table({"label": texts, "candidate_prediction": texts, "champion_prediction": texts[::-1]})
    y, candidate = logged_answers(feature_map, pairs, "candidate")
    assert y.tolist() == [2, 0, 1] and candidate.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert logged_answers(feature_map, pairs, "champion")[1].tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    unknown = pairs.set_column(2, "champion_prediction", pa.array([json.dumps("DL")] * 3))
    with pytest.raises(ValueError, match=r"classes not seen in training: \['DL'\]"):
        logged_answers(feature_map, unknown, "champion")
