"""What the Models, Data and Label queue pages show, gathered from the registry, the reports folder, the
curated data and the prediction log (plain data: the pages only lay it out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flightplan.config import PipelineConfig
from flightplan.layout import Layout
from flightplan.manifests import LiveDecision, MonitoringSummary
from flightplan.settings import Settings
from flightplan.ui.charts import Chart, Point

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class VersionCard:
    alias: str
    version: str
    run_id: str | None
    metrics: dict[str, float]  # test metrics of its training run
    reason: str
    mlflow_url: str | None


@dataclass(frozen=True)
class Overview:
    pipeline: str
    model: str
    primary_metric: str
    versions: list[VersionCard]
    all_versions: list[str]
    checks: list[MonitoringSummary] = field(default_factory=list)  # newest first
    live_decisions: list[LiveDecision] = field(default_factory=list)  # newest first
    profiles: list[str] = field(default_factory=list)  # report-relative paths of profile pages
    data_docs: bool = False
    validations: list[str] = field(default_factory=list)  # newest first, relative to the Data Docs folder
    experiments: dict[str, str] = field(default_factory=dict)  # title -> MLflow UI link


def _run_url(settings: Settings, experiment_id: str, run_id: str | None = None) -> str:
    """A run's page, or an experiment's table of runs (its bare address opens MLflow's GenAI overview)."""
    runs = f"{settings.mlflow_ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return f"{runs}/{run_id}" if run_id else runs


def overview(layout: Layout, checks: int = 60) -> Overview:
    from flightplan.tracking import client

    settings, config = layout.settings, layout.config
    mlflow_client = client(settings)
    cards, known = registered_versions(mlflow_client, settings, config.registered_model)
    return Overview(
        pipeline=config.name,
        model=config.registered_model,
        primary_metric=config.primary_metric,
        versions=cards,
        all_versions=known,
        checks=monitoring_checks(layout, checks),
        live_decisions=live_decisions(layout, checks),
        profiles=profile_pages(layout),
        data_docs=data_docs_index(settings).exists(),
        validations=validation_pages(settings, config.name),
        experiments=experiment_links(mlflow_client, settings, config),
    )


def registered_versions(
    mlflow_client: MlflowClient, settings: Settings, name: str
) -> tuple[list[VersionCard], list[str]]:
    """The cards of the model's champion, challenger and previous versions (those it has), and all its versions,
    newest first."""
    from flightplan.model.registry import CHALLENGER, CHAMPION, PREVIOUS

    registered = mlflow_client.search_registered_models(filter_string=f"name = '{name}'")
    if not registered:
        return [], []
    aliases = registered[0].aliases
    cards = [
        version_card(mlflow_client, settings, name, alias, str(aliases[alias]))
        for alias in (CHAMPION, CHALLENGER, PREVIOUS)
        if alias in aliases
    ]
    known = sorted((v.version for v in mlflow_client.search_model_versions(f"name = '{name}'")), key=int, reverse=True)
    return cards, known


def version_card(mlflow_client: MlflowClient, settings: Settings, name: str, alias: str, version: str) -> VersionCard:
    """The card of one version of model ``name``, with the test metrics of the run that trained it."""
    registered = mlflow_client.get_model_version(name, version)
    run_id = registered.tags.get("flightplan.run_id")
    run = mlflow_client.get_run(run_id) if run_id else None
    metrics = run.data.metrics if run else {}
    return VersionCard(
        alias=alias,
        version=str(registered.version),
        run_id=run_id,
        metrics={k.removeprefix("test_"): v for k, v in sorted(metrics.items()) if k.startswith("test_")},
        reason=registered.tags.get("flightplan.reason", ""),
        mlflow_url=_run_url(settings, run.info.experiment_id, run_id) if run else None,
    )


def experiment_links(mlflow_client: MlflowClient, settings: Settings, config: PipelineConfig) -> dict[str, str]:
    """The MLflow links to those of the pipeline's experiments that exist, by title."""
    from flightplan.monitoring.stages import monitoring_experiment
    from flightplan.tracking import data_experiment, model_experiment

    links = {}
    for title, experiment in (
        ("data engineering", data_experiment(config)),
        ("model engineering", model_experiment(config)),
        ("monitoring", monitoring_experiment(config)),
    ):
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is not None:
            links[title] = _run_url(settings, found.experiment_id)
    return links


def profile_pages(layout: Layout) -> list[str]:
    """The pipeline's data profile pages, newest first, relative to the reports root."""
    reports = layout.settings.reports_root
    return sorted((str(p.relative_to(reports)) for p in layout.reports("profile").glob("*/profile.html")), reverse=True)


def monitoring_checks(layout: Layout, limit: int) -> list[MonitoringSummary]:
    """The newest monitoring summaries (by window end), with their reports relative to the reports root."""
    summaries = [MonitoringSummary.read(p) for p in layout.reports("monitoring").glob(f"*/{MonitoringSummary.FILE}")]
    summaries.sort(key=lambda s: s.window.end, reverse=True)
    root = layout.settings.reports_root
    return [
        s.model_copy(update={"reports": {k: str(Path(v).relative_to(root)) for k, v in s.reports.items()}})
        for s in summaries[:limit]
    ]


def live_decisions(layout: Layout, limit: int) -> list[LiveDecision]:
    """The decisions taken on live rows (live gates and watches) of the pipeline, the newest ``limit`` first."""
    found = [LiveDecision.read(p) for p in (layout.reports("deployment") / "live").glob("*.json")]
    return sorted(found, key=lambda decision: decision.decided_at, reverse=True)[:limit]


def verdict(decision: LiveDecision) -> str:
    """What a decision on live rows did, in a word or two."""
    if decision.gate == "watch":
        return "rolled back" if decision.accepted else "kept"
    return "promoted" if decision.accepted else "refused"


def charts(found: Overview) -> list[Chart]:
    """What the Models page plots for a pipeline: the live primary metric per monitoring window by the version
    that answered it, the share of drifting columns per window, and each live gate's two values, every point
    with the decision taken there."""
    metric, checks = found.primary_metric, found.checks
    by_version: dict[str, list[Point]] = {}
    for check in checks:
        if metric in check.performance:
            point = Point(check.window.end, check.performance[metric], check.decision.outcome)
            by_version.setdefault(f"version {check.model_version}", []).append(point)
    drift = [Point(c.window.end, c.drift_share, f"{c.decision.outcome}: {c.decision.reason}") for c in checks]
    gates: dict[str, list[Point]] = {"candidate": [], "champion": []}
    for decision in found.live_decisions:
        if decision.test is None:  # nothing was proven: no champion yet, or the candidate was the champion
            continue
        for side, points in gates.items():
            note = f"{decision.gate}: version {decision.candidate} against {decision.champion}: {verdict(decision)}"
            points.append(Point(decision.decided_at, decision.test[side], note))
    return [
        Chart("live-metric", f"live {metric} per monitoring window, by the version that answered", by_version),
        Chart("drift-share", "share of drifting columns per monitoring window", {"drift share": drift}),
        Chart("live-gate", f"live gates and watches: {metric} of both versions on the same live rows", gates),
    ]


def data_docs_index(settings: Settings) -> Path:
    return settings.gx_root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"


def validation_pages(settings: Settings, pipeline: str) -> list[str]:
    """The Data Docs pages of a pipeline's validation runs, newest first. Each page is plain HTML, readable
    offline; the Data Docs index lists them with scripts it loads from CDNs."""
    root = data_docs_index(settings).parent
    pages = (root / "validations" / pipeline).glob("*/*/*.html")  # <interval>/<validated at>/<page>
    return [str(p.relative_to(root)) for p in sorted(pages, key=lambda p: p.parent.name, reverse=True)]


def daily_counts(layout: Layout) -> pd.DataFrame:
    """Curated (labeled) rows per day and per class: one row per day, one column per class."""
    import pyarrow.dataset as pads

    config = layout.config
    root = layout.dataset("labeled")
    part = config.source.partition_column
    if not root.exists():
        return pd.DataFrame()
    dataset = pads.dataset(root, partitioning="hive")
    if config.label.task == "regression":
        table = dataset.to_table(columns=[part]).group_by(part).aggregate([([], "count_all")])
        return table.to_pandas().rename(columns={"count_all": "rows"}).set_index(part).sort_index()
    table = dataset.to_table(columns=[part, config.label.name])
    counts = table.group_by([part, config.label.name]).aggregate([([], "count_all")]).to_pandas()
    wide = counts.pivot_table(index=part, columns=config.label.name, values="count_all", fill_value=0)
    wide.columns = [f"{config.label.name}={c}" for c in wide.columns]
    return wide.assign(rows=wide.sum(axis=1)).sort_index()


def curated_rows(layout: Layout, day: date, page: int, size: int) -> tuple[pd.DataFrame, int]:
    """One page of a day's curated rows with their labels, in time order; and the day's row count."""
    from flightplan.data.batches import read_partitions

    config = layout.config
    table = read_partitions(layout.dataset("labeled"), config.source.partition_column, [day])
    if config.source.time_column:
        table = table.sort_by([(config.source.time_column, "ascending")])
    columns = [config.label.name, *[c for c in table.column_names if c != config.label.name]]
    return table.slice(page * size, size).select(columns).to_pandas(), table.num_rows


def label_queue(settings: Settings, config: PipelineConfig, limit: int) -> list[dict[str, Any]]:
    """The answered predictions the model was least sure of that have no ground truth yet."""
    from flightplan.prediction_log import least_sure_unlabeled

    return least_sure_unlabeled(settings.predictions_db_url, config.name, config.label.task, limit)
