"""The one place that talks to MLflow. Every stage of a DAG run logs into a child run of one parent run
per (dag_id, run_id), so the MLflow UI shows a DAG run as one expandable row, tagged for lineage."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from flightplan.config import PipelineConfig
from flightplan.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import ActiveRun
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class RunContext:
    """Who asked for this work: the Airflow DAG run and task, or a command line."""

    dag_id: str = "cli"
    run_id: str = field(default_factory=lambda: datetime.now(UTC).strftime("manual__%Y%m%dT%H%M%S"))
    task_id: str = ""


def client(settings: Settings) -> MlflowClient:
    import mlflow
    from mlflow.tracking import MlflowClient

    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri)


@dataclass(frozen=True)
class MetricSink:
    """Logs (name, value, step) points to one run. Plain data, so a training callback can carry it to a
    Spark worker and log from there."""

    tracking_uri: str
    run_id: str

    def __call__(self, points: list[tuple[str, float, int]]) -> None:
        import time

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = int(time.time() * 1000)
        MlflowClient(self.tracking_uri).log_batch(
            self.run_id, metrics=[Metric(name, value, now, step) for name, value, step in points]
        )


def experiment_id(mlflow_client: MlflowClient, settings: Settings, name: str) -> str:
    existing = mlflow_client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    root = settings.mlflow_artifact_root
    return mlflow_client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)


def git_commit() -> str:
    if "FLIGHTPLAN_GIT_COMMIT" in os.environ:
        return os.environ["FLIGHTPLAN_GIT_COMMIT"]
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


# On a run a stage of which reused an earlier output: "<stage>: <what it reused>", one line per stage.
REUSED_TAG = "flightplan.cache_reused"


def record_reuse(stage: str, reused: str) -> None:
    """Says in MLflow's active run that ``stage`` reused ``reused`` (a run, a split) instead of doing its work."""
    import mlflow

    active = mlflow.active_run()
    before = active.data.tags.get(REUSED_TAG, "") if active else ""
    mlflow.set_tag(REUSED_TAG, "\n".join(filter(None, [before, f"{stage}: {reused}"])))


def reused_by(stage: str) -> str | None:
    """What ``stage`` of MLflow's active run reused (``record_reuse``); None when it did its work."""
    import mlflow

    active = mlflow.active_run()
    lines = active.data.tags.get(REUSED_TAG, "").splitlines() if active else []
    prefix = f"{stage}: "
    return next((line.removeprefix(prefix) for line in lines if line.startswith(prefix)), None)


@cache
def code_version() -> str:
    """A hash of the library's source: a change to any module, committed or not, is new code (a cached output's
    key holds it)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def lineage_tags(config: PipelineConfig, context: RunContext) -> dict[str, str]:
    return {
        "flightplan.pipeline": config.name,
        "flightplan.config_hash": config.fingerprint(),
        "airflow.dag_id": context.dag_id,
        "airflow.run_id": context.run_id,
        "git.commit": git_commit(),
    }


def dag_run_id(mlflow_client: MlflowClient, exp_id: str, config: PipelineConfig, context: RunContext, role: str) -> str:
    """The one MLflow run of a DAG run in an experiment (created by its first task, found by later ones)."""
    query = (
        f"tags.`airflow.dag_id` = '{context.dag_id}' and tags.`airflow.run_id` = '{context.run_id}' "
        f"and tags.`flightplan.role` = '{role}'"
    )
    found = mlflow_client.search_runs([exp_id], filter_string=query, max_results=1)
    if found:
        return str(found[0].info.run_id)
    tags = {**lineage_tags(config, context), "flightplan.role": role}
    return str(mlflow_client.create_run(exp_id, run_name=f"{context.dag_id} {context.run_id}", tags=tags).info.run_id)


@contextmanager
def stage_run(
    settings: Settings, config: PipelineConfig, context: RunContext, experiment: str, stage: str
) -> Iterator[ActiveRun]:
    """An MLflow run for one stage, nested under the DAG run's parent run (created by the first stage)."""
    import mlflow

    mlflow_client = client(settings)
    exp_id = experiment_id(mlflow_client, settings, experiment)
    parent_id = dag_run_id(mlflow_client, exp_id, config, context, "dag_run")
    stage_tags = {
        **lineage_tags(config, context),
        "airflow.task_id": context.task_id or stage,
        "flightplan.stage": stage,
        "mlflow.parentRunId": parent_id,
    }
    with mlflow.start_run(experiment_id=exp_id, run_name=stage, tags=stage_tags) as run:
        yield run


@contextmanager
def model_run(settings: Settings, config: PipelineConfig, context: RunContext) -> Iterator[ActiveRun]:
    """The MLflow run of one model-engineering DAG run, resumed by each of its tasks, so that a model's
    params, metrics and artifacts sit in one row of the compare view."""
    import mlflow

    mlflow_client = client(settings)
    exp_id = experiment_id(mlflow_client, settings, model_experiment(config))
    run_id = dag_run_id(mlflow_client, exp_id, config, context, "model")
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tag("airflow.task_id", context.task_id)
        yield run


def model_experiment(config: PipelineConfig) -> str:
    return f"{config.name}-model-engineering"


def data_experiment(config: PipelineConfig) -> str:
    return f"{config.name}-data-engineering"


# How a frame's column kinds read as MLflow schema types (numpy dtype kinds; the rest are strings).
MLFLOW_COLUMN_TYPES = {"b": "boolean", "i": "long", "u": "long", "f": "double", "M": "datetime"}


def log_dataset(frame: pd.DataFrame, source: str, name: str, digest: str, context: str) -> None:
    """Logs a dataset input to the active run: where it is, its fingerprint and its schema from the
    column types, without MLflow hashing and inferring a schema over every value (seconds per 100k rows)."""
    import json
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema

    class TableDataset(MetaDataset):
        """A metadata-only dataset that also carries its row count, which the MLflow UI shows."""

        @property
        def profile(self) -> dict[str, int]:
            return {"num_rows": len(frame)}

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    schema = Schema(
        [
            ColSpec(DataType[MLFLOW_COLUMN_TYPES.get(dtype.kind, "string")], str(column))
            for column, dtype in frame.dtypes.items()
        ]
    )
    with warnings.catch_warnings():
        # MLflow registers its local-file source class twice and warns that the path is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset_source = resolve_dataset_source(source)
    mlflow.log_input(TableDataset(dataset_source, name=name, digest=digest, schema=schema), context=context)
