"""The Evidently 0.7 reports of a monitoring run, for people to read: data drift per feature and of the
prediction, a data summary, and the model's performance on ground truth when there is enough of it.

Drawn on a seeded sample of at most ``rows`` per side (Evidently draws its plots on every row it is given),
with each column's test pinned to the one the verdicts of record chose on every row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from flightplan.monitoring.drift import ColumnDrift

SAMPLE_SEED = 0


@dataclass(frozen=True)
class Roles:
    """What each column of the frames is to Evidently."""

    numeric: list[str]
    categorical: list[str]
    task: str  # binary, multiclass, regression
    target: str | None = None  # set for the performance report
    prediction: str = "prediction"
    probability: str = "probability"


def _sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    return frame if len(frame) <= rows else frame.sample(n=rows, random_state=SAMPLE_SEED)


def _definition(roles: Roles) -> Any:
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification, Regression

    numeric, categorical = list(roles.numeric), list(roles.categorical)
    outcome: dict[str, Any] = {}
    if roles.task == "binary":
        numeric.append(roles.probability)
        if roles.target:
            categorical.append(roles.target)
            outcome["classification"] = [
                BinaryClassification(target=roles.target, prediction_probas=roles.probability, pos_label=1)
            ]
    elif roles.task == "multiclass":
        categorical.append(roles.prediction)
        if roles.target:
            categorical.append(roles.target)
            outcome["classification"] = [
                MulticlassClassification(target=roles.target, prediction_labels=roles.prediction)
            ]
    else:
        numeric.append(roles.prediction)
        if roles.target:
            numeric.append(roles.target)
            outcome["regression"] = [Regression(target=roles.target, prediction=roles.prediction)]
    return DataDefinition(numerical_columns=numeric, categorical_columns=categorical, **outcome)


def _save(snapshot: Any, folder: Path, name: str) -> dict[str, Path]:
    html, json_path = folder / f"{name}.html", folder / f"{name}.json"
    snapshot.save_html(str(html))  # Evidently writes only to a path given as a str
    snapshot.save_json(str(json_path))
    return {f"{name}_html": html, f"{name}_json": json_path}


def drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, roles: Roles, verdicts: list[ColumnDrift], folder: Path, rows: int
) -> dict[str, Path]:
    """Data drift of the features and the model's output, and a summary of the current data's quality."""
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    definition = _definition(roles)
    columns = [v.column for v in verdicts if v.method != "no values"]
    report = Report(
        [
            DataDriftPreset(
                columns=columns, per_column_method={v.column: v.method for v in verdicts if v.column in columns}
            ),
            DataSummaryPreset(columns=columns),
        ]
    )
    snapshot = report.run(
        Dataset.from_pandas(_sample(current, rows), data_definition=definition),
        Dataset.from_pandas(_sample(reference, rows), data_definition=definition),
    )
    return _save(snapshot, folder, "drift")


def performance_report(
    reference: pd.DataFrame, current: pd.DataFrame, roles: Roles, folder: Path, rows: int
) -> dict[str, Path]:
    """The model's quality on the current rows with ground truth, beside its quality on the reference."""
    from evidently import Dataset, Report
    from evidently.presets import ClassificationPreset, RegressionPreset

    definition = _definition(roles)
    preset = RegressionPreset() if roles.task == "regression" else ClassificationPreset()
    snapshot = Report([preset]).run(
        Dataset.from_pandas(_sample(current, rows), data_definition=definition),
        Dataset.from_pandas(_sample(reference, rows), data_definition=definition),
    )
    return _save(snapshot, folder, "performance")


def drift_verdicts(snapshot: Any) -> dict[str, tuple[float, bool]]:
    """Evidently's own score and verdict of each column of a drift report run with ``include_tests=True``."""
    result = snapshot.dict()
    failed = {
        test["metric_config"]["metric_id"]
        for test in result["tests"]
        if test["id"] == "drift" and str(getattr(test["status"], "value", test["status"])).endswith("FAIL")
    }
    return {
        metric["config"]["column"]: (float(metric["value"]), metric["id"] in failed)
        for metric in result["metrics"]
        if metric["config"]["type"].endswith(":ValueDrift")
    }
