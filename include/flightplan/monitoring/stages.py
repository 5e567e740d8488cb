"""The monitoring stage: one window of answered predictions against the serving model's training data.

Writes the Evidently reports and a summary under ``reports/<pipeline>/monitoring/<window>/``, and keeps one
MLflow run per window in ``<pipeline>-monitoring`` (a re-run of a window updates its run): drift share,
per-feature drift scores and live performance as metrics stamped with the window's end, so the MLflow UI
plots them over time; the decision and its reason as tags."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flightplan.config import PipelineConfig
from flightplan.layout import Layout, open_pipeline
from flightplan.monitoring import policy
from flightplan.monitoring.drift import drift_share, frame_drift
from flightplan.monitoring.window import PREDICTION, PROBABILITY, VERSION, current_window, reference_frame
from flightplan.settings import Settings
from flightplan.tracking import RunContext

WINDOW_TAG, DECISION_TAG, DECIDED_AT_TAG = "flightplan.window", "flightplan.decision", "flightplan.decided_at"


@dataclass(frozen=True)
class MonitorJob:
    pipeline: str
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    context: RunContext = field(default_factory=RunContext)
    overrides: dict[str, Any] | None = None  # thresholds from a run's Params, as config overrides

    def open(self) -> tuple[Settings, PipelineConfig, Layout]:
        return open_pipeline(self.pipeline, self.overrides)

    @property
    def key(self) -> str:
        return f"{self.start:%Y%m%dT%H%M%S}-{self.end:%Y%m%dT%H%M%S}"

    @classmethod
    def last_hours(
        cls, pipeline: str, end: datetime, context: RunContext, overrides: dict[str, Any] | None = None
    ) -> MonitorJob:
        """The window of the pipeline's ``monitoring.window_hours`` up to ``end``."""
        _, config, _ = open_pipeline(pipeline, overrides)
        return cls(pipeline, end - timedelta(hours=config.monitoring.window_hours), end, context, overrides)


def monitoring_experiment(config: PipelineConfig) -> str:
    return f"{config.name}-monitoring"


def serving_version(settings: Settings, config: PipelineConfig, current: pd.DataFrame) -> str:
    """The version that answered most of the window (the champion when the window is empty)."""
    from flightplan.model.registry import CHAMPION, alias_version

    if len(current):
        return str(Counter(current[VERSION]).most_common(1)[0][0])
    version = alias_version(settings, config.registered_model, CHAMPION)
    if version is None:
        raise LookupError(f"{config.registered_model} has no `{CHAMPION}`: nothing is served, nothing to monitor")
    return version


class VersionScores:
    """The scores a registry version gives a frame (its native booster, proven equal to its ONNX model)."""

    def __init__(self, settings: Settings, config: PipelineConfig, version: str) -> None:
        import xgboost as xgb

        from flightplan.model.registry import load_booster, load_version

        self.model = load_version(settings, config.registered_model, version)
        self.threshold = float(self.model.metadata.get("threshold") or 0.5)
        self._booster = xgb.Booster(model_file=bytearray(load_booster(settings, config.registered_model, version)))

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        from flightplan.model.features import encode

        scores = np.asarray(self._booster.inplace_predict(encode(frame, self.model.feature_map)), dtype=np.float64)
        return scores.reshape(len(frame), -1) if self.model.feature_map.task == "multiclass" else scores

    def with_outputs(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the answers the service would log for it."""
        from flightplan.serving.batch import outputs

        prediction, probability = outputs(self(frame), self.model.feature_map, self.threshold)
        return frame.assign(**{PREDICTION: prediction, PROBABILITY: probability})

    def metrics(self, labeled: pd.DataFrame) -> dict[str, float]:
        from flightplan.model.evaluate import compute_metrics
        from flightplan.model.features import encode_label

        feature_map = self.model.feature_map
        return compute_metrics(feature_map.task, encode_label(labeled, feature_map), self(labeled), self.threshold)


def last_retrain(settings: Settings, config: PipelineConfig) -> datetime | None:
    """When a monitoring run of this pipeline last asked for a retraining."""
    from flightplan.tracking import client, experiment_id

    mlflow_client = client(settings)
    found = mlflow_client.search_runs(
        [experiment_id(mlflow_client, settings, monitoring_experiment(config))],
        filter_string=f"tags.`{DECIDED_AT_TAG}` LIKE '%'",  # kept when a re-run of the window holds
    )
    moments = [
        datetime.fromisoformat(run.data.tags[DECIDED_AT_TAG]) for run in found if DECIDED_AT_TAG in run.data.tags
    ]
    return max(moments, default=None)


def window_run(settings: Settings, config: PipelineConfig, job: MonitorJob) -> str:
    """The MLflow run of this window: found again when the window is checked again."""
    from flightplan.tracking import client, experiment_id, lineage_tags

    mlflow_client = client(settings)
    exp_id = experiment_id(mlflow_client, settings, monitoring_experiment(config))
    found = mlflow_client.search_runs([exp_id], filter_string=f"tags.`{WINDOW_TAG}` = '{job.key}'", max_results=1)
    if found:
        return str(found[0].info.run_id)
    tags = {**lineage_tags(config, job.context), WINDOW_TAG: job.key}
    name = f"window {job.start:%Y-%m-%d %H:%M} to {job.end:%Y-%m-%d %H:%M}"
    return str(mlflow_client.create_run(exp_id, run_name=name, tags=tags).info.run_id)


def check(job: MonitorJob) -> dict[str, Any]:
    """Drift and performance of the window, the reports, the MLflow run and the retrain decision; returns
    the summary (also written as ``summary.json`` beside the reports)."""
    import mlflow

    from flightplan.data.partitions import fresh_dir, write_json_atomic
    from flightplan.model.registry import training_run_id
    from flightplan.monitoring.report import Roles, drift_report, performance_report
    from flightplan.tracking import client

    settings, config, layout = job.open()
    spec = config.monitoring
    current = current_window(settings, config, job.start, job.end)
    version = serving_version(settings, config, current)
    scorer = VersionScores(settings, config, version)
    reference_inputs, manifest = reference_frame(settings, config, version)
    reference = scorer.with_outputs(reference_inputs)
    features = scorer.model.feature_map.features
    numeric = [f.name for f in features if f.kind == "numeric"]
    categorical = [f.name for f in features if f.kind == "categorical"]
    output = PROBABILITY if config.label.task == "binary" else PREDICTION
    output_numeric = config.label.task != "multiclass"
    verdicts = frame_drift(reference, current, numeric, categorical) if len(current) else []
    output_drift = (
        frame_drift(reference, current, [output] if output_numeric else [], [] if output_numeric else [output])
        if len(current)
        else []
    )
    labeled = current[current[config.label.name].notna()]
    live = scorer.metrics(labeled) if len(labeled) >= spec.min_labeled_rows else {}
    training_run = client(settings).get_run(training_run_id(settings, config.registered_model, version))
    test_score = training_run.data.metrics.get(f"test_{config.primary_metric}")
    evidence = policy.Evidence(
        rows=len(current),
        labeled_rows=len(labeled),
        drift_share=drift_share(verdicts),
        drifted=[v.column for v in verdicts if v.drifted],
        metric=config.primary_metric,
        live_score=live.get(config.primary_metric),
        champion_score=test_score,
    )
    now = datetime.now(UTC)
    decision = policy.decide(evidence, spec, last_retrain(settings, config), now)

    folder = fresh_dir(layout.reports("monitoring") / job.key)
    reports: dict[str, Path] = {}
    if len(current):
        roles = Roles(numeric, categorical, config.label.task)
        drift_columns = [*verdicts, *output_drift]
        reports |= drift_report(reference, current, roles, drift_columns, folder, spec.report_rows)
    if live:
        roles = Roles(numeric, categorical, config.label.task, target=config.label.name)
        label_type = {"binary": int, "regression": float}.get(config.label.task, str)
        reference_labeled, current_labeled = (
            side.assign(**{config.label.name: side[config.label.name].astype(label_type)})
            for side in (reference, labeled)
        )
        reports |= performance_report(reference_labeled, current_labeled, roles, folder, spec.report_rows)
    summary = {
        "pipeline": config.name,
        "window": {"start": job.start.isoformat(), "end": job.end.isoformat()},
        "model_version": version,
        "reference": manifest,
        "rows": len(current),
        "labeled_rows": len(labeled),
        "drift_share": evidence.drift_share,
        "columns": [v.to_dict() for v in verdicts],
        "prediction_drift": [v.to_dict() for v in output_drift],
        "performance": live,
        f"champion_test_{config.primary_metric}": test_score,
        "decision": decision.to_dict(),
        "reports": {name: str(path) for name, path in reports.items()},
    }
    path = write_json_atomic(summary, folder / "summary.json")
    stamp = int(job.end.timestamp() * 1000)
    values = {
        "rows": len(current),
        "labeled_rows": len(labeled),
        "drift_share": evidence.drift_share,
        **{f"drift_{v.column}": v.score for v in [*verdicts, *output_drift] if np.isfinite(v.score)},
        **{f"live_{name}": value for name, value in live.items() if np.isfinite(value)},
    }
    with mlflow.start_run(run_id=window_run(settings, config, job)):
        for name, value in values.items():
            mlflow.log_metric(name, value, timestamp=stamp)
        tags = {
            DECISION_TAG: decision.outcome,
            "flightplan.reason": decision.reason,
            "flightplan.model_version": version,
        }
        mlflow.set_tags({**tags, **({DECIDED_AT_TAG: now.isoformat()} if decision.retrain else {})})
        mlflow.log_artifacts(str(folder), artifact_path="monitoring")
    return {**summary, "summary": str(path)}


def outcome(summary: dict[str, Any]) -> dict[str, Any]:
    """What the DAG needs of a check (for XCom): where the summary is, the decision, and the conf of the
    model_engineering run to trigger when it is to retrain."""
    _, config, _ = open_pipeline(summary["pipeline"])
    decision = summary["decision"]
    conf = {
        "pipeline": config.name,
        "reason": f"monitoring {summary['window']['start']} to {summary['window']['end']}: {decision['reason']}",
        "window_days": config.monitoring.retrain_window_days,
    }
    return {
        "summary": summary["summary"],
        "rows": summary["rows"],
        "drift_share": summary["drift_share"],
        "decision": decision,
        "retrain_conf": conf,
    }
