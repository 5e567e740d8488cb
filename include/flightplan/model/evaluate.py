"""Evaluation: metrics by task, metrics per slice, plots and the model card.

Metric names are the same for every run of every pipeline (``roc_auc``, ``log_loss``, ``rmse``...), prefixed
by the side they were measured on (``validation_``, ``test_``) when logged, so the MLflow compare view
lines runs up."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

MIN_SLICE_ROWS = 30
CALIBRATION_BINS = 10


def best_f1_threshold(y: np.ndarray, proba: np.ndarray) -> float:
    """The probability cut that maximises F1 (on validation, so the test set stays untouched)."""
    precision, recall, thresholds = skm.precision_recall_curve(y, proba)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(proba, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(y[inside].mean() - proba[inside].mean())
    return float(error)


# A metric: its value for labels ``y``, predictions (P(1), class probabilities, or values) and the binary cut.
Metric = Callable[[np.ndarray, np.ndarray, float], float]


def _both_classes(score: Callable[..., float]) -> Metric:
    """A ranking metric, undefined (NaN) when the labels hold one class only."""
    return lambda y, p, _: float(score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def _at_cut(score: Callable[..., float]) -> Metric:
    """A metric of the classes chosen at the cut."""
    return lambda y, p, cut: float(score(y, (p >= cut).astype(int), zero_division=0))


def _classes(p: np.ndarray) -> list[int]:
    return list(range(p.shape[1]))


METRICS: dict[str, dict[str, Metric]] = {
    "regression": {
        "rmse": lambda y, p, _: float(np.sqrt(skm.mean_squared_error(y, p))),
        "mae": lambda y, p, _: float(skm.mean_absolute_error(y, p)),
        "r2": lambda y, p, _: float(skm.r2_score(y, p)),
    },
    "multiclass": {
        "log_loss": lambda y, p, _: float(skm.log_loss(y, p, labels=_classes(p))),
        "accuracy": lambda y, p, _: float(skm.accuracy_score(y, p.argmax(axis=1))),
        "f1_macro": lambda y, p, _: float(
            skm.f1_score(y, p.argmax(axis=1), average="macro", labels=_classes(p), zero_division=0)
        ),
    },
    "binary": {
        "roc_auc": _both_classes(skm.roc_auc_score),
        "pr_auc": _both_classes(skm.average_precision_score),
        "log_loss": lambda y, p, _: float(skm.log_loss(y, p, labels=[0, 1])),
        "brier": lambda y, p, _: float(skm.brier_score_loss(y, p)),
        "calibration_error": lambda y, p, _: expected_calibration_error(y, p),
        "f1": _at_cut(skm.f1_score),
        "precision": _at_cut(skm.precision_score),
        "recall": _at_cut(skm.recall_score),
        "positive_rate": lambda y, p, _: float(np.mean(y)),
    },
}


def compute_metrics(task: str, y: np.ndarray, prediction: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The task's metrics for labels ``y`` and predictions (P(1), class probabilities, or values)."""
    return {name: metric(y, prediction, threshold) for name, metric in METRICS[task].items()}


def slice_metrics(
    task: str,
    frame: pd.DataFrame,
    y: np.ndarray,
    prediction: np.ndarray,
    slices: list[str],
    threshold: float,
) -> list[dict[str, Any]]:
    """Metrics for each value of each slice column with at least MIN_SLICE_ROWS rows, biggest first."""
    rows = []
    for column in slices:
        values = frame[column].astype("string").fillna("(missing)").to_numpy()
        for value in pd.Series(values).value_counts().index:
            inside = values == value
            if inside.sum() < MIN_SLICE_ROWS:
                continue
            scores = compute_metrics(task, y[inside], prediction[inside], threshold)
            rows.append({"slice": column, "value": str(value), "rows": int(inside.sum()), **scores})
    return rows


# A plot: its file name, the figure's size in inches, and what draws it on the axis given as ``ax``.
Plot = tuple[str, tuple[float, float], Callable[..., object]]


def task_plots(task: str, y: np.ndarray, prediction: np.ndarray, threshold: float) -> list[Plot]:
    """ROC, precision-recall, confusion matrix and calibration (binary), confusion matrix (multiclass), or
    predicted vs actual (regression)."""
    if task == "binary":
        from sklearn.calibration import CalibrationDisplay

        def confusion_matrix(ax: Any) -> None:
            skm.ConfusionMatrixDisplay.from_predictions(y, (prediction >= threshold).astype(int), ax=ax)
            ax.set_title(f"threshold {threshold:.3f}")

        return [
            ("roc.png", (5, 5), partial(skm.RocCurveDisplay.from_predictions, y, prediction)),
            ("precision_recall.png", (5, 5), partial(skm.PrecisionRecallDisplay.from_predictions, y, prediction)),
            ("confusion_matrix.png", (5, 5), confusion_matrix),
            (
                "calibration.png",
                (5, 5),
                partial(CalibrationDisplay.from_predictions, y, prediction, n_bins=CALIBRATION_BINS),
            ),
        ]
    if task == "multiclass":
        return [
            (
                "confusion_matrix.png",
                (6, 6),
                partial(skm.ConfusionMatrixDisplay.from_predictions, y, prediction.argmax(axis=1)),
            )
        ]

    def predicted_vs_actual(ax: Any) -> None:
        ax.scatter(y, prediction, s=2, alpha=0.3)
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted")

    return [("predicted_vs_actual.png", (5, 5), predicted_vs_actual)]


def importance_plot(importances: dict[str, float]) -> Plot:
    """The 25 features of the largest gain shares."""
    top = sorted(importances.items(), key=lambda item: item[1])[-25:]

    def bars(ax: Any) -> None:
        ax.barh([name for name, _ in top], [value for _, value in top])
        ax.set_xlabel("share of total gain")

    return ("feature_importance.png", (6, max(3, 0.3 * len(top))), bars)


def plot_files(
    task: str,
    y: np.ndarray,
    prediction: np.ndarray,
    threshold: float,
    importances: dict[str, float],
    folder: Path,
) -> list[Path]:
    """PNG plots of the test-set behaviour (``task_plots``) and feature importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, size, draw in [*task_plots(task, y, prediction, threshold), importance_plot(importances)]:
        figure, axis = plt.subplots(figsize=size)
        draw(ax=axis)
        path = folder / name
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def model_card(facts: dict[str, Any]) -> str:
    """A markdown model card from the facts of a run: data window, features, metrics, slices, limits."""
    lines = [
        f"# {facts['registered_model']}: model card",
        "",
        f"Pipeline `{facts['pipeline']}`, task **{facts['task']}**, label `{facts['label']}`. "
        f"MLflow run `{facts['run_id']}`, config hash `{facts['config_hash']}`, git `{facts['git_commit']}`.",
        "",
        "## Data",
        f"- Split `{facts['split_id']}`, strategy {facts['split_strategy']}, "
        f"fingerprint `{facts['data_fingerprint']}`.",
    ]
    for side, stats in facts["sides"].items():
        lines.append(f"- {side}: {stats['rows']:,} rows, {stats['from']} .. {stats['to']}")
    lines += ["", "## Features", f"{len(facts['features'])} used: " + ", ".join(f"`{f}`" for f in facts["features"])]
    if facts["dropped_features"]:
        lines.append("Dropped by selection (low gain): " + ", ".join(f"`{f}`" for f in facts["dropped_features"]))
    lines += ["", "## Training", f"XGBoost, {facts['rounds']} rounds, parameters: `{facts['params']}`"]
    if facts.get("threshold") is not None:
        lines.append(f"Decision threshold {facts['threshold']:.4f} (best F1 on validation).")
    sides = list(facts["metrics"])
    lines += ["", "## Metrics", "", "| metric | " + " | ".join(sides) + " |", "|---|" + "---:|" * len(sides)]
    for name in facts["metrics"]["test"]:
        lines.append(f"| {name} | " + " | ".join(f"{facts['metrics'][side][name]:.4f}" for side in sides) + " |")
    if facts["slices"]:
        primary = facts["primary_metric"]
        lines += [
            "",
            f"## Slices (test, {primary})",
            "",
            f"| slice | value | rows | {primary} |",
            "|---|---|---:|---:|",
        ]
        for row in facts["slices"]:
            lines.append(f"| {row['slice']} | {row['value']} | {row['rows']:,} | {row[primary]:.4f} |")
    lines += [
        "",
        "## Limits",
        "- Trained on the window above only; behaviour outside it (new seasons, routes, categories) is unknown.",
        "- Categories not seen in training are treated as missing.",
        f"- Slices with fewer than {MIN_SLICE_ROWS} test rows are not reported.",
        "",
    ]
    return "\n".join(lines)
