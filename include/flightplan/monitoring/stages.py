"""The monitoring stage: one window of answered predictions against the serving model's training data.

Writes the Evidently reports and a summary under ``reports/<pipeline>/monitoring/<window>/``, and keeps one
MLflow run per window in ``<pipeline>-monitoring`` (a re-run of a window updates its run): drift share,
per-feature drift scores and live performance as metrics stamped with the window's end, so the MLflow UI
plots them over time; the decision and its reason as tags."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flightplan.config import PipelineConfig
from flightplan.features import FeatureMap
from flightplan.layout import Layout, open_pipeline
from flightplan.manifests import (
    ColumnDriftResult,
    MonitoringDecision,
    MonitoringOutcome,
    MonitoringSummary,
    MonitoringWindow,
)
from flightplan.monitoring import policy
from flightplan.monitoring.drift import NO_VALUES, ColumnDrift, ColumnValues, drift_share, frame_values, judge
from flightplan.monitoring.window import VersionScores, current_window, reference_frame
from flightplan.scoring import PREDICTION, PROBABILITY, VERSION
from flightplan.settings import Settings
from flightplan.tracking import RunContext

if TYPE_CHECKING:
    from flightplan.monitoring.report import ReportJob

WINDOW_TAG, DECISION_TAG = "flightplan.window", "flightplan.decision"
# How the reason of a retraining a check asks for starts (model_engineering's `reason`, on the version it registers).
RETRAIN_REASON = "monitoring "


@dataclass(frozen=True)
class MonitorJob:
    pipeline: str
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    context: RunContext = field(default_factory=RunContext)
    overrides: dict[str, Any] | None = None  # thresholds from a run's Params, as config overrides
    waiting: policy.Waiting = field(default_factory=policy.Waiting)  # later checks, retrainings, in Airflow

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


def serving_version(settings: Settings, config: PipelineConfig, answered: dict[str, int]) -> str:
    """The version that answered most of the window (the champion when the window is empty)."""
    from flightplan.model.registry import CHAMPION, alias_version

    if answered:
        return max(answered, key=lambda version: (answered[version], int(version)))
    version = alias_version(settings, config.registered_model, CHAMPION)
    if version is None:
        raise LookupError(f"{config.registered_model} has no `{CHAMPION}`: nothing is served, nothing to monitor")
    return version


@dataclass(frozen=True)
class Reference:
    """What a window is compared with: the version that answered most of it, its feature map and threshold,
    its training data with its answers for them, and the split manifest that data came from."""

    answered: dict[str, int]  # rows per version in the window
    version: str
    feature_map: FeatureMap
    threshold: float
    frame: pd.DataFrame
    path: Path  # the reference's file
    manifest: str  # the split it was taken from


def window_reference(settings: Settings, config: PipelineConfig, job: MonitorJob) -> Reference:
    from flightplan.model.registry import decision_threshold, version_metadata
    from flightplan.prediction_log import answered_versions

    answered = answered_versions(settings.predictions_db_url, config.name, job.start, job.end)
    version = serving_version(settings, config, answered)
    metadata, feature_map = version_metadata(settings, config.registered_model, version)
    frame, path, manifest = reference_frame(settings, config, version)
    return Reference(answered, version, feature_map, decision_threshold(metadata), frame, path, manifest)


def live_metrics(
    settings: Settings, config: PipelineConfig, reference: Reference, labeled: pd.DataFrame
) -> dict[str, float]:
    """The metrics of what the service answered for rows with ground truth: the logged probability or value;
    a multiclass log holds only the chosen class's probability, so those rows are scored again."""
    from flightplan.features import encode_label
    from flightplan.model.evaluate import compute_metrics

    feature_map = reference.feature_map
    if feature_map.task == "binary":
        answered = labeled[PROBABILITY].to_numpy(dtype=np.float64)
    elif feature_map.task == "regression":
        answered = pd.to_numeric(labeled[PREDICTION]).to_numpy(dtype=np.float64)
    else:
        answered = VersionScores(settings, config, reference.version)(labeled)
    return compute_metrics(feature_map.task, encode_label(labeled, feature_map), answered, reference.threshold)


def retraining(settings: Settings, config: PipelineConfig, job: MonitorJob) -> policy.Retraining:
    """The pipeline's last successful retraining (the newest version registered by a retraining that a check
    asked for), whether one is on its way, and the checks still to come."""
    from flightplan.model.registry import newest_version_time

    last = newest_version_time(settings, config.registered_model, RETRAIN_REASON)
    return policy.Retraining(last, job.waiting)


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


@dataclass(frozen=True)
class Comparison:
    """The window's rows set against the reference: the values of each column to judge for drift, and the rows
    whose ground truth can judge the model."""

    current: pd.DataFrame  # the window's rows answered by the reference's version
    numeric: list[str]  # the model's features, by kind
    categorical: list[str]
    values: list[ColumnValues]  # of the features; none when the window is empty
    output_values: list[ColumnValues]  # of the model's output
    labeled: pd.DataFrame  # rows with a label that fits the task
    labels_set_aside: int  # rows with a label that does not
    judged: bool  # enough labeled rows, of two classes at least, to measure performance


def compare(config: PipelineConfig, reference: Reference, window: pd.DataFrame) -> Comparison:
    """The rows of the window that the reference's version answered, set against its reference. Those another
    version answered (a canary's, the previous champion's before a promotion) are left out, drift included: their
    outputs and live metrics are not the version's, and the summary's ``answered_by`` counts them."""
    from flightplan.features import label_problem
    from flightplan.monitoring.report import model_output

    current = window[window[VERSION] == reference.version].drop(columns=VERSION)
    task, label = config.label.task, config.label.name
    features = reference.feature_map.features
    numeric = [f.name for f in features if f.kind == "numeric"]
    categorical = [f.name for f in features if f.kind == "categorical"]
    output, output_numeric = model_output(task)
    output_kinds = ([output], []) if output_numeric else ([], [output])
    values = frame_values(reference.frame, current, numeric, categorical) if len(current) else []
    output_values = frame_values(reference.frame, current, *output_kinds) if len(current) else []
    sent_back = current[current[label].notna()]
    # A label that does not fit the task (stored before the API checked them) would stop the metrics.
    classes = reference.feature_map.classes
    usable = sent_back[label].map(lambda value: label_problem(task, classes, value) is None).astype(bool)
    labeled = sent_back[usable]
    # Classification metrics (and Evidently's per-class report) need ground truth of two classes at least.
    classes_known = task == "regression" or labeled[label].nunique() >= 2
    judged = len(labeled) >= config.monitoring.min_labeled_rows and classes_known
    set_aside = len(sent_back) - len(labeled)
    return Comparison(current, numeric, categorical, values, output_values, labeled, set_aside, judged)


def reports_to_draw(config: PipelineConfig, reference: Reference, comparison: Comparison) -> list[ReportJob]:
    """The drift report when the window has rows, the performance report when its labels can judge the model."""
    from flightplan.monitoring.report import ReportJob, Roles

    task, label = config.label.task, config.label.name
    current, numeric, categorical = comparison.current, comparison.numeric, comparison.categorical
    reports: list[ReportJob] = []
    if len(current):
        tested = [*comparison.values, *comparison.output_values]
        methods = {v.column: v.method for v in tested if v.method != NO_VALUES}
        reports.append(ReportJob("drift", current, reference.frame, Roles(numeric, categorical, task), methods))
    if comparison.judged:
        label_type = {"binary": int, "regression": float}.get(task, str)
        reference_labeled, current_labeled = (
            frame.assign(**{label: frame[label].astype(label_type)}) for frame in (reference.frame, comparison.labeled)
        )
        roles = Roles(numeric, categorical, task, target=label)
        reports.append(ReportJob("performance", current_labeled, reference_labeled, roles))
    return reports


@dataclass(frozen=True)
class Conclusion:
    """What a check makes of a window: the drift of each column, the live metrics and the retrain decision."""

    columns: list[ColumnDrift]  # the model's features
    prediction_drift: list[ColumnDrift]  # the model's output
    live: dict[str, float]  # empty when the window's labels cannot judge the model
    evidence: policy.Evidence
    decision: policy.Decision


def conclude(
    settings: Settings, config: PipelineConfig, job: MonitorJob, reference: Reference, comparison: Comparison
) -> Conclusion:
    """Judges the drift of each column and the live performance against the model's test score, then decides."""
    from flightplan.model.registry import training_run_id
    from flightplan.tracking import client

    verdicts = [judge(v) for v in comparison.values]
    output_drift = [judge(v) for v in comparison.output_values]
    live = live_metrics(settings, config, reference, comparison.labeled) if comparison.judged else {}
    training_run = client(settings).get_run(training_run_id(settings, config.registered_model, reference.version))
    evidence = policy.Evidence(
        rows=len(comparison.current),
        labeled_rows=len(comparison.labeled),
        drift_share=drift_share([*verdicts, *output_drift]),
        drifted=[v.column for v in [*verdicts, *output_drift] if v.drifted],
        metric=config.primary_metric,
        live_score=live.get(config.primary_metric),
        champion_score=training_run.data.metrics.get(f"test_{config.primary_metric}"),
    )
    known = retraining(settings, config, job)
    decision = policy.decide(evidence, config.monitoring, known, datetime.now(UTC))
    return Conclusion(verdicts, output_drift, live, evidence, decision)


def summarize(
    job: MonitorJob,
    config: PipelineConfig,
    reference: Reference,
    comparison: Comparison,
    conclusion: Conclusion,
    drawn: dict[str, Path],
) -> MonitoringSummary:
    """The check's summary (``summary.json``): the window, its reference, its measures, the decision and the
    reports drawn."""
    return MonitoringSummary(
        pipeline=config.name,
        window=MonitoringWindow(start=job.start, end=job.end),
        model_version=reference.version,
        answered_by=reference.answered,
        reference=str(reference.path),
        split_manifest=reference.manifest,
        rows=len(comparison.current),
        labeled_rows=len(comparison.labeled),
        labels_set_aside=comparison.labels_set_aside,
        drift_share=conclusion.evidence.drift_share,
        columns=[ColumnDriftResult(**v.to_dict()) for v in conclusion.columns],
        prediction_drift=[ColumnDriftResult(**v.to_dict()) for v in conclusion.prediction_drift],
        performance=conclusion.live,
        primary_metric=config.primary_metric,
        champion_test_score=conclusion.evidence.champion_score,
        decision=MonitoringDecision(**conclusion.decision.to_dict()),
        reports={name: str(path) for name, path in drawn.items()},
    )


def log_window(
    settings: Settings, config: PipelineConfig, job: MonitorJob, version: str, conclusion: Conclusion, folder: Path
) -> None:
    """Logs into the window's MLflow run its measures, stamped with the window's end, the decision as tags and
    the folder of the reports and summary."""
    import mlflow

    stamp = int(job.end.timestamp() * 1000)
    evidence, decision = conclusion.evidence, conclusion.decision
    metrics = {
        "rows": evidence.rows,
        "labeled_rows": evidence.labeled_rows,
        "drift_share": evidence.drift_share,
        **{
            f"drift_{v.column}": v.score
            for v in [*conclusion.columns, *conclusion.prediction_drift]
            if np.isfinite(v.score)
        },
        **{f"live_{name}": value for name, value in conclusion.live.items() if np.isfinite(value)},
    }
    with mlflow.start_run(run_id=window_run(settings, config, job)):
        for name, value in metrics.items():
            mlflow.log_metric(name, value, timestamp=stamp)
        mlflow.set_tags(
            {DECISION_TAG: decision.outcome, "flightplan.reason": decision.reason, "flightplan.model_version": version}
        )
        mlflow.log_artifacts(str(folder), artifact_path="monitoring")


def check(job: MonitorJob) -> tuple[MonitoringSummary, Path]:
    """Drift and performance of the window, the reports, the MLflow run and the retrain decision; returns
    the summary and its file (``summary.json`` beside the reports).

    Three things run at once: the main thread reads the window, a thread reads and scores the reference
    (Arrow, pandas and XGBoost release the GIL), and a child process imports Evidently, then draws the reports
    while the verdicts are computed."""
    from concurrent.futures import ThreadPoolExecutor

    from flightplan.data.partitions import fresh_dir
    from flightplan.monitoring.report import ReportProcess

    settings, config, layout = job.open()
    with ReportProcess() as drawer, ThreadPoolExecutor(1, thread_name_prefix="reference") as side:
        reference_job = side.submit(window_reference, settings, config, job)
        current = current_window(settings, config, job.start, job.end)
        reference = reference_job.result()
        comparison = compare(config, reference, current)
        folder = fresh_dir(layout.reports("monitoring") / job.key)
        drawer.draw(reports_to_draw(config, reference, comparison), folder, config.monitoring.report_rows)
        conclusion = conclude(settings, config, job, reference, comparison)
        drawn = drawer.wait()
    summary = summarize(job, config, reference, comparison, conclusion, drawn)
    path = summary.write(folder / summary.FILE)
    log_window(settings, config, job, reference.version, conclusion, folder)
    return summary, path


def outcome(summary: MonitoringSummary, path: Path) -> dict[str, Any]:
    """What the DAG needs of a check (for XCom): where the summary is, the decision, and the conf of the
    model_engineering run to trigger when it is to retrain."""
    _, config, _ = open_pipeline(summary.pipeline)
    window, decision = summary.window, summary.decision
    conf = {
        "reason": f"{RETRAIN_REASON}{window.start.isoformat()} to {window.end.isoformat()}: {decision.reason}",
        "window_days": config.monitoring.retrain_window_days,
    }
    found = MonitoringOutcome(
        summary=str(path), rows=summary.rows, drift_share=summary.drift_share, decision=decision, retrain_conf=conf
    )
    return found.to_json()
