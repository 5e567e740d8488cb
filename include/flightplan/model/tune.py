"""Optuna search over the config's space: each trial trains with early stopping on the validation side and
is pruned when it falls behind the median of earlier trials at the same round."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import xgboost as xgb

from flightplan.config import SearchDimension, TuningSpec
from flightplan.features import FeatureMap
from flightplan.model.train import VALIDATION, booster_params, fit, latest, stopping_metric

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialResult:
    number: int
    params: dict[str, Any]
    state: str  # "complete" or "pruned"
    score: float | None  # validation value of the stopping metric at the best round
    rounds: int | None  # best round + 1
    seconds: float


@dataclass(frozen=True)
class TuningResult:
    best: TrialResult
    trials: list[TrialResult]
    metric: str


class _PruneBehind(xgb.callback.TrainingCallback):
    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def after_iteration(
        self, model: xgb.Booster, epoch: int, evals_log: xgb.callback.TrainingCallback.EvalsLog
    ) -> bool:
        self.trial.report(latest(evals_log[VALIDATION][self.metric]), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"behind the median at round {epoch}")
        return False


def suggest(trial: optuna.Trial, name: str, dimension: SearchDimension) -> Any:
    if dimension.type == "categorical":
        return trial.suggest_categorical(name, dimension.choices or [])
    low, high = float(dimension.low or 0), float(dimension.high or 0)
    if dimension.type == "int":
        return trial.suggest_int(name, int(low), int(high), log=dimension.log)
    return trial.suggest_float(name, low, high, log=dimension.log)


def median_pruned_study(spec: TuningSpec) -> optuna.Study:
    """A quiet TPE study that prunes a trial behind the median of the earlier ones, once past the rounds early
    stopping waits for."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        direction="minimize",  # every stopping metric is a loss
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=spec.early_stopping_rounds),
    )


def tune(
    dtrain: xgb.DMatrix,
    dval: xgb.DMatrix,
    feature_map: FeatureMap,
    spec: TuningSpec,
    trials: int,
    timeout_seconds: float,
    on_trial: Callable[[TrialResult], None],
) -> TuningResult:
    """Run up to ``trials`` trials within ``timeout_seconds``; ``on_trial`` sees each one as it ends."""
    metric = stopping_metric(feature_map.task)
    results: list[TrialResult] = []

    def objective(trial: optuna.Trial) -> float:
        tuned = {name: suggest(trial, name, dimension) for name, dimension in spec.space.items()}
        params = booster_params(feature_map, spec.fixed, tuned, spec.seed)
        started = time.perf_counter()
        try:
            booster = fit(
                params,
                dtrain,
                dval,
                spec.num_boost_round,
                spec.early_stopping_rounds,
                [_PruneBehind(trial, metric)],
            )
        except optuna.TrialPruned:
            result = TrialResult(trial.number, tuned, "pruned", None, None, time.perf_counter() - started)
            results.append(result)
            on_trial(result)
            raise
        score = float(booster.best_score)
        result = TrialResult(
            trial.number, tuned, "complete", score, booster.best_iteration + 1, time.perf_counter() - started
        )
        results.append(result)
        on_trial(result)
        log.info("trial %d: %s=%.5f after %d rounds %s", trial.number, metric, score, result.rounds, tuned)
        return score

    study = median_pruned_study(spec)
    study.optimize(objective, n_trials=trials, timeout=timeout_seconds, catch=())
    complete = [r for r in results if r.state == "complete"]
    if not complete:
        raise RuntimeError(f"no tuning trial completed within {trials} trials and {timeout_seconds:.0f} s")
    best = next(r for r in complete if r.number == study.best_trial.number)
    return TuningResult(best=best, trials=results, metric=metric)
