"""XGBoost training on the encoded matrices: parameters from config, per-round metrics streamed while it
runs, predictions in one shape per task (binary: P(1); multiclass: one column per class; regression: value)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import xgboost as xgb

from flightplan.features import FeatureMap

log = logging.getLogger(__name__)

# The objective of each task, and its evaluation metrics; the last one is what early stopping watches.
OBJECTIVES: dict[str, tuple[str, list[str]]] = {
    "binary": ("binary:logistic", ["auc", "logloss"]),
    "multiclass": ("multi:softprob", ["merror", "mlogloss"]),
    "regression": ("reg:squarederror", ["mae", "rmse"]),
}
# The evaluation set every round reports and early stopping watches.
VALIDATION = "validation"


def booster_params(feature_map: FeatureMap, fixed: dict[str, Any], tuned: dict[str, Any], seed: int) -> dict[str, Any]:
    objective, metrics = OBJECTIVES[feature_map.task]
    params: dict[str, Any] = {
        "objective": objective,
        "eval_metric": metrics,
        "seed": seed,
        "nthread": os.cpu_count() or 1,
        **fixed,
        **tuned,
    }
    if feature_map.task == "multiclass":
        params["num_class"] = len(feature_map.classes)
    return params


def stopping_metric(task: str) -> str:
    return OBJECTIVES[task][1][-1]


def matrices(
    feature_map: FeatureMap, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray]
) -> tuple[xgb.DMatrix, xgb.DMatrix]:
    """Quantised train and validation matrices (built once, shared by every trial), categorical codes
    marked as such."""
    options = {"feature_names": feature_map.model_names, "feature_types": feature_map.model_types}
    dtrain = xgb.QuantileDMatrix(train[0], label=train[1], enable_categorical=True, **options)
    dval = xgb.QuantileDMatrix(validation[0], label=validation[1], ref=dtrain, enable_categorical=True, **options)
    return dtrain, dval


def latest(values: list[float] | list[tuple[float, float]]) -> float:
    """The newest value of an evaluation log (cross-validation logs hold (mean, std) pairs)."""
    value = values[-1]
    return float(value[0] if isinstance(value, tuple) else value)


class RoundReporter(xgb.callback.TrainingCallback):
    """Hands each round's validation metrics to ``sink`` (MLflow) in batches at most ``every`` seconds
    apart, so they show live without a write per round, and logs a progress line as often; the first round at
    once, so that a training shows it has begun. In distributed training every worker sees the same (reduced)
    metrics; only the first one reports them."""

    def __init__(self, sink: Callable[[list[tuple[str, float, int]]], None], every: float = 2.0) -> None:
        self.sink = sink
        self.every = every
        self.pending: list[tuple[str, float, int]] = []
        self.last = -math.inf

    def after_iteration(
        self, model: xgb.Booster, epoch: int, evals_log: xgb.callback.TrainingCallback.EvalsLog
    ) -> bool:
        if xgb.collective.get_rank() != 0:
            return False
        current = {f"{VALIDATION}_{metric}": latest(values) for metric, values in evals_log[VALIDATION].items()}
        self.pending += [(name, value, epoch) for name, value in current.items()]
        if time.monotonic() - self.last >= self.every:
            self.flush()
            log.info("round %d: %s", epoch, ", ".join(f"{k}={v:.5f}" for k, v in sorted(current.items())))
        return False

    def after_training(self, model: xgb.Booster) -> xgb.Booster:
        self.flush()
        return model

    def flush(self) -> None:
        if self.pending:
            self.sink(self.pending)
            self.pending = []
        self.last = time.monotonic()


def fit(
    params: dict[str, Any],
    dtrain: xgb.DMatrix,
    dval: xgb.DMatrix,
    rounds: int,
    early_stopping_rounds: int | None = None,
    callbacks: list[xgb.callback.TrainingCallback] | None = None,
) -> xgb.Booster:
    return xgb.train(
        params,
        dtrain,
        num_boost_round=rounds,
        # Only the validation side: evaluating the train side every round (an AUC sorts all its rows)
        # costs as much as a third of the training time; evaluate reports the train side once.
        evals=[(dval, VALIDATION)],
        early_stopping_rounds=early_stopping_rounds,
        verbose_eval=False,
        callbacks=callbacks or [],
    )


def predict(booster: xgb.Booster, matrix: np.ndarray, task: str) -> np.ndarray:
    """Predictions of all the booster's trees (a final model is trained to exactly its best round)."""
    output = booster.inplace_predict(matrix)
    return (
        np.asarray(output, dtype=np.float64).reshape(len(matrix), -1)
        if task == "multiclass"
        else np.asarray(output, dtype=np.float64)
    )
