"""The data-engineering stages as a DAG task (or a command) calls them: each takes the pipeline, the
interval and who is asking, does its work through the library, logs to MLflow, and returns the path of
the manifest it wrote, which is all that travels between tasks."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flightplan.config import PipelineConfig
from flightplan.data.partitions import days_in, interval_key, staging_area
from flightplan.layout import Layout, open_pipeline
from flightplan.manifests import (
    IngestManifest,
    LabelManifest,
    LatestSplit,
    PartitionCounts,
    SplitManifest,
    ValidationManifest,
    WrangleManifest,
)
from flightplan.settings import Settings
from flightplan.tracking import RunContext, data_experiment, stage_run

if TYPE_CHECKING:
    from flightplan.data.split import SplitTarget

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """The batch broke expectations; the message names each one with what was observed."""


@dataclass(frozen=True)
class StageInput:
    pipeline: str
    start: date
    end: date
    context: RunContext = field(default_factory=RunContext)
    overrides: dict[str, Any] | None = None
    fresh: bool = False  # split even when the newest split was made of the same data, config and code

    def open(self) -> tuple[StageInput, Settings, PipelineConfig, Layout]:
        """This job over the days its pipeline says (a snapshot has its own day), and what it runs with."""
        settings, config, layout = open_pipeline(self.pipeline, self.overrides)
        start, end = config.interval(self.start, self.end)
        return replace(self, start=start, end=end), settings, config, layout

    @property
    def key(self) -> str:
        return interval_key(self.start, self.end)

    @property
    def days(self) -> list[date]:
        return days_in(self.start, self.end)


def _log_counts(prefix: str, manifest: PartitionCounts) -> None:
    import mlflow

    mlflow.log_metrics({f"{prefix}_rows": manifest.rows_total, f"{prefix}_quarantined": manifest.quarantined_total})


def ingest(job: StageInput) -> Path:
    import mlflow

    from flightplan.data.ingest import ingest as ingest_interval

    job, settings, config, layout = job.open()
    with stage_run(settings, config, job.context, data_experiment(config), "ingest"):
        mlflow.log_params({"interval_start": job.start.isoformat(), "interval_end": job.end.isoformat()})
        path = ingest_interval(layout, job.start, job.end)
        manifest = IngestManifest.read(path)
        _log_counts("ingest", manifest)
        mlflow.log_metrics({"landing_files": len(manifest.files), "days_kept": len(manifest.days_kept)})
        if manifest.days_kept:
            mlflow.set_tag("flightplan.days_kept", ", ".join(map(str, manifest.days_kept)))
        mlflow.log_artifact(str(path))
    return path


def profile(job: StageInput) -> Path:
    import mlflow

    from flightplan.data.label import local_refusal
    from flightplan.data.profile import profile_table, profile_title, write_profile
    from flightplan.data.rewrite import LOCAL, engine_for, read_days_locally

    job, settings, config, layout = job.open()
    with stage_run(settings, config, job.context, data_experiment(config), "profile"):
        engine = engine_for(layout, "curated", job.days, partial(local_refusal, config, []))
        mlflow.set_tag("flightplan.engine", engine)
        if engine == LOCAL:
            stats = profile_table(read_days_locally(layout, "curated", job.days), config)
        else:
            stats = _profile_on_spark(settings, layout, job.days)
        json_path, html_path = write_profile(
            stats, layout.reports("profile") / job.key, profile_title(config, job.start, job.end)
        )
        counts = {f"class_{label}": count for label, count in stats["label"]["counts"].items()}
        mlflow.log_metrics({"rows": stats["rows"], **counts})
        mlflow.log_artifact(str(json_path))
        mlflow.log_artifact(str(html_path))
    return html_path


def validate(job: StageInput) -> Path:
    """Run the expectation suite on the ingested batch. Raises ValidationFailed, after the result and the
    Data Docs are written and logged, when any expectation fails or a landing file lacks columns."""
    import mlflow

    from flightplan.data.batches import read_partitions, to_pandas
    from flightplan.data.validate import validate_frame

    job, settings, config, layout = job.open()
    part = config.source.partition_column
    ingest_manifest = IngestManifest.read(layout.manifest("ingest", job.key))
    with stage_run(settings, config, job.context, data_experiment(config), "validate"):
        table = read_partitions(layout.dataset("curated"), part, job.days)
        report = validate_frame(to_pandas(table.drop_columns([part])), config, settings.gx_root, job.key)
        problems = [
            f"landing file {f.path} lacks column(s) {f.missing_columns}"
            for f in ingest_manifest.files
            if f.missing_columns
        ] + [
            f"{o.expectation} on column '{o.column}': {o.observed}" if o.column else f"{o.expectation}: {o.observed}"
            for o in report.failures
        ]
        result_path = ValidationManifest(
            success=report.success and not problems,
            problems=problems,
            data_docs=str(report.data_docs),
            gx_result=report.raw,
        ).write(layout.manifest("validate", job.key))
        mlflow.log_metrics(
            {
                "expectations": len(report.outcomes),
                "expectations_failed": len(report.failures),
                "success": float(report.success and not problems),
            }
        )
        mlflow.set_tag("data_docs", report.data_docs.as_uri())
        mlflow.log_artifact(str(result_path))
    if problems:
        raise ValidationFailed(
            f"{config.name} {job.key}: {len(problems)} problem(s); Data Docs: {report.data_docs}\n  - "
            + "\n  - ".join(problems)
        )
    return result_path


def wrangle(job: StageInput) -> Path:
    import mlflow

    from flightplan.data.rewrite import LOCAL, engine_for, rewrite_days, rewrite_days_locally
    from flightplan.data.wrangle import local_refusal, wrangle_frame, wrangle_table

    job, settings, config, layout = job.open()
    with stage_run(settings, config, job.context, data_experiment(config), "wrangle"):
        used: dict[str, Any] = {}
        engine = engine_for(layout, "curated", job.days, partial(local_refusal, config))
        mlflow.set_tag("flightplan.engine", engine)
        wrangled = wrangle_table if engine == LOCAL else wrangle_frame

        def mark(frame: Any) -> Any:
            marked, values = wrangled(frame, config)
            used.update(values)
            return marked

        if engine == LOCAL:
            counts = rewrite_days_locally(layout, "curated", "wrangled", job.days, job.key, mark)
        else:
            from flightplan.spark import get_spark

            counts = rewrite_days(get_spark(settings), layout, "curated", "wrangled", job.days, job.key, mark)
        manifest = WrangleManifest(**counts.model_dump(), imputed_with=used)
        path = manifest.write(layout.manifest("wrangle", job.key))
        _log_counts("wrangle", manifest)
        mlflow.log_artifact(str(path))
    return path


def label(job: StageInput) -> Path:
    import mlflow

    from flightplan.data.label import local_refusal, usable_labels
    from flightplan.data.rewrite import LOCAL, engine_for
    from flightplan.prediction_log import ground_truth, key_schema

    job, settings, config, layout = job.open()
    with stage_run(settings, config, job.context, data_experiment(config), "label"):
        truth_rows = (
            []
            if config.label.feedback == "ignore"
            else ground_truth(settings.predictions_db_url, config.name, key_schema(config))
        )
        truth_rows, set_aside = usable_labels(config.label.task, truth_rows)
        engine = engine_for(layout, "wrangled", job.days, partial(local_refusal, config, truth_rows))
        mlflow.set_tag("flightplan.engine", engine)
        if engine == LOCAL:
            counts, matched = _label_locally(layout, job, truth_rows)
        else:
            counts, matched = _label_on_spark(settings, layout, job, truth_rows)
        manifest = LabelManifest(
            **counts.model_dump(),
            ground_truth_matched=matched,
            ground_truth_set_aside=len(set_aside),
            ground_truth_set_aside_examples=set_aside[:20],
        )
        mlflow.log_metric("label_ground_truth_matched", matched)
        path = manifest.write(layout.manifest("label", job.key))
        _log_counts("label", manifest)
        mlflow.log_artifact(str(path))
    return path


def training_window(job: StageInput, config: PipelineConfig, layout: Layout) -> tuple[date, date]:
    """The days a split covers: up to the newest labeled day (an old interval's re-run never publishes a set
    narrower than the newest), back ``split.window_days`` or to the first labeled day (a snapshot: its day)."""
    if config.source.snapshot:
        return job.start, job.end
    part = config.source.partition_column
    root = layout.dataset("labeled")
    known = sorted(date.fromisoformat(p.name.split("=", 1)[1]) for p in root.glob(f"{part}=*") if p.is_dir())
    end = max(job.end, known[-1] + timedelta(days=1)) if known else job.end
    if config.split.window_days:
        return end - timedelta(days=config.split.window_days), end
    return (min(known[0], job.start) if known else job.start), end


@dataclass(frozen=True)
class SplitOutcome:
    manifest: Path
    unchanged: str | None = None  # why nothing was written: the newest split had the same inputs (no retraining)


def split_input_key(layout: Layout, config: PipelineConfig, window: tuple[date, date]) -> str:
    """What a split is made of: the labeled days' rows, the window, the effective config and the code."""
    from flightplan.data.split import rows_digest
    from flightplan.tracking import code_version

    labeled = rows_digest(layout.dataset("labeled"), config, days_in(*window))
    inputs = f"{labeled}|{interval_key(*window)}|{config.fingerprint()}|{code_version()}"
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def unchanged_split(layout: Layout, input_key: str) -> Path | None:
    """The newest split's manifest when that split was made of inputs of ``input_key`` and each of its sides
    with rows is still there; else None."""
    latest = layout.splits / "latest.json"
    if not latest.exists():
        return None
    path = Path(LatestSplit.read(latest).manifest)
    newest = SplitManifest.read(path) if path.exists() else None
    if newest is None or newest.input_key != input_key:
        return None
    kept = all(Path(newest.paths[side]).is_dir() for side, stats in newest.sides.items() if stats.rows)
    return path if kept else None


def split(job: StageInput) -> SplitOutcome:
    """Split the labeled data of the training window (:func:`training_window`), unless the newest split was made
    of the same labeled data, window, config and code (the job's ``fresh`` splits anyway)."""
    import mlflow

    from flightplan.data.rewrite import LOCAL, engine_for
    from flightplan.data.split import SplitTarget, local_refusal
    from flightplan.tracking import record_reuse

    job, settings, config, layout = job.open()
    window = training_window(job, config, layout)
    with stage_run(settings, config, job.context, data_experiment(config), "split"):
        input_key = split_input_key(layout, config, window)
        earlier = None if job.fresh else unchanged_split(layout, input_key)
        if earlier:
            record_reuse("split", str(earlier))
            unchanged = f"cache hit: {earlier} was made of the same data, config and code; no new split, no retraining"
            log.info("split: %s (Param fresh: split anyway)", unchanged)
            return SplitOutcome(earlier, unchanged)
        days = days_in(*window)
        engine = engine_for(layout, "labeled", days, partial(local_refusal, config))
        mlflow.set_tag("flightplan.engine", engine)
        split_id = interval_key(*window)
        with staging_area(layout, "split", split_id) as staging:
            writes = _split_locally if engine == LOCAL else _split_on_spark
            path = writes(settings, layout, days, SplitTarget(layout.splits, split_id, staging, window, input_key))
        manifest = SplitManifest.read(path)
        for side, stats in manifest.sides.items():
            mlflow.log_metric(f"{side}_rows", stats.rows)
        mlflow.set_tag("flightplan.data_fingerprint", manifest.fingerprint)
        mlflow.log_artifact(str(path))
    return SplitOutcome(path)


def _profile_on_spark(settings: Settings, layout: Layout, days: list[date]) -> dict[str, Any]:
    from flightplan.data.profile import profile_frame
    from flightplan.data.rewrite import read_days
    from flightplan.spark import get_spark

    return profile_frame(read_days(get_spark(settings), layout, "curated", days), layout.config)


def _split_on_spark(settings: Settings, layout: Layout, days: list[date], target: SplitTarget) -> Path:
    from flightplan.data.rewrite import read_days
    from flightplan.data.split import assign_split, write_splits
    from flightplan.spark import get_spark

    frame = assign_split(read_days(get_spark(settings), layout, "labeled", days), layout.config)
    return write_splits(frame, layout.config, target)


def _split_locally(_settings: Settings, layout: Layout, days: list[date], target: SplitTarget) -> Path:
    from flightplan.data.rewrite import read_days_locally
    from flightplan.data.split import write_splits_locally

    table = read_days_locally(layout, "labeled", days)
    return write_splits_locally(table, layout.config, target)


def _label_locally(layout: Layout, job: StageInput, truth_rows: list[dict[str, Any]]) -> tuple[PartitionCounts, int]:
    """The labeled days written in this process, with the ground truth sent back joined; how many rows it matched."""
    from flightplan.data.label import label_table
    from flightplan.data.rewrite import rewrite_days_locally

    matched = [0]

    def mark(table: Any) -> Any:
        labeled, matched[0] = label_table(table, layout.config, truth_rows)
        return labeled

    return rewrite_days_locally(layout, "wrangled", "labeled", job.days, job.key, mark), matched[0]


def _label_on_spark(
    settings: Settings, layout: Layout, job: StageInput, truth_rows: list[dict[str, Any]]
) -> tuple[PartitionCounts, int]:
    """The labeled days written by Spark, with the ground truth sent back joined; how many rows it matched."""
    from flightplan.data.label import label_frame, truth_frame
    from flightplan.data.rewrite import read_days, rewrite_days
    from flightplan.spark import get_spark

    config = layout.config
    spark = get_spark(settings)
    wrangled = read_days(spark, layout, "wrangled", job.days)
    truth = truth_frame(wrangled, config, truth_rows).cache() if truth_rows else None
    counts = rewrite_days(
        spark, layout, "wrangled", "labeled", job.days, job.key, lambda f: label_frame(f, config, truth)
    )
    matched = 0
    if truth is not None:
        matched = wrangled.join(truth, on=config.source.key, how="left_semi").count()
        truth.unpersist()
    return counts, matched


def run_in_order(job: StageInput) -> dict[str, Path]:
    """The stages in the order data_engineering runs them, for a caller that runs the chain without Airflow: what
    each wrote, by stage (the split's manifest, or the newest one when it had the same inputs)."""
    written: dict[str, Path] = {stage.__name__: stage(job) for stage in (ingest, profile, validate, wrangle, label)}
    written["split"] = split(job).manifest
    return written
