"""Batch scoring: the champion scores the wrangled rows of an interval on Spark, and the predictions
replace that interval's partitions of the `predictions` dataset (so a re-run gives the same rows, never
duplicates).

Each Spark task reads wrangled Parquet files itself (pyarrow), scores them with the native booster behind the
champion (faster than onnxruntime for large batches; the two were proven equal on the whole test set when the
model was packaged), encoded by the same :func:`encode` as training, and writes the scored rows' files itself:
the rows never pass through the JVM, whose conversion of rows to Arrow and back cost more than the booster
(docs/performance.md). Spark only hands out the files, through Spark Connect too."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from flightplan.config import DerivedFeature
from flightplan.features import FeatureMap, derive, encode
from flightplan.manifests import BatchScoringManifest
from flightplan.scoring import PREDICTION, PROBABILITY, VERSION, outputs

if TYPE_CHECKING:
    from flightplan.config import PipelineConfig
    from flightplan.data.stages import StageInput

# Per Python worker: each booster loaded once, found by the digest of its bytes (a version number alone is
# not enough: two pipelines, or two registries, have versions of the same number).
_boosters: dict[str, Any] = {}
# Parquet bytes a Spark task scores at most, and the tasks an interval is cut into at least (while it has that
# many files): few enough tasks that each one's start (the booster shipped and checked) stays small beside its
# rows, enough that every core of a small cluster gets some.
TASK_BYTES = 64 << 20
MIN_TASKS = 16
# The prediction column's type by task, whatever a file holds (an empty one included).
PREDICTION_TYPES = {"binary": pa.int32(), "multiclass": pa.string(), "regression": pa.float64()}


@dataclass(frozen=True)
class BatchScorer:
    """Everything a Spark task needs to score rows (plain data, shipped to the executors)."""

    version: str
    booster: bytes
    booster_digest: str
    feature_map_json: str
    derived: list[DerivedFeature]
    threshold: float
    passthrough: list[str]  # columns copied to the output (key, time; the partition column is the folder's)

    def score(self, table: pa.Table) -> pa.Table:
        """The passthrough columns of ``table`` as they are, with the champion's prediction, probability and
        version."""
        feature_map = FeatureMap.from_json(self.feature_map_json)
        frame = derive(table, self.derived).to_pandas()
        scores = np.asarray(self._booster().inplace_predict(encode(frame, feature_map)), dtype=np.float64)
        prediction, probability = outputs(scores, feature_map, self.threshold)
        columns = [table.column(name) for name in self.passthrough]
        columns.append(pa.array(prediction, PREDICTION_TYPES[feature_map.task]))
        columns.append(pa.array(probability, pa.float64(), from_pandas=True))  # NaN (regression): null
        columns.append(pa.repeat(pa.scalar(self.version), table.num_rows))
        return pa.Table.from_arrays(columns, names=[*self.passthrough, PREDICTION, PROBABILITY, VERSION])

    def _booster(self) -> Any:
        """The worker's booster, on the cores Spark gave its task: each task of an executor runs in a Python worker
        of its own, and a booster on every core in each of them would share the cores between tasks' threads."""
        import xgboost as xgb
        from pyspark import TaskContext

        if self.booster_digest not in _boosters:
            _boosters[self.booster_digest] = xgb.Booster(model_file=bytearray(self.booster))
        booster = _boosters[self.booster_digest]
        task = TaskContext.get()
        booster.set_param({"nthread": task.cpus() if task is not None else os.cpu_count() or 1})
        return booster


@dataclass(frozen=True)
class ScoreFiles:
    """A Spark task's work: each (wrangled file, scored file) pair of its group read, scored and written."""

    scorer: BatchScorer
    columns: list[str]  # what a prediction reads, and the passthrough

    def __call__(self, group: list[tuple[str, str]]) -> None:
        import pyarrow.parquet as pq

        from flightplan.files import write_parquet_atomic

        for source, target in group:
            write_parquet_atomic(self.scorer.score(pq.read_table(source, columns=self.columns)), Path(target))


def file_groups(pairs: list[tuple[Path, Path]]) -> list[list[tuple[str, str]]]:
    """The (source, target) pairs cut into tasks of about ``TASK_BYTES`` of source, ``MIN_TASKS`` at least while
    there are as many files, each task a run of neighbouring files (in day order)."""
    sizes = [source.stat().st_size for source, _ in pairs]
    tasks = min(len(pairs), max(MIN_TASKS, -(-sum(sizes) // TASK_BYTES)))
    share = max(sum(sizes), 1) / max(tasks, 1)
    groups: list[list[tuple[str, str]]] = [[] for _ in range(tasks)]
    before = 0  # source bytes of the files before this one
    for (source, target), size in zip(pairs, sizes, strict=True):
        # The task whose share of the bytes the file's middle falls in.
        groups[min(tasks - 1, int((before + size / 2) / share))].append((str(source), str(target)))
        before += size
    return [group for group in groups if group]


def columns_read(config: PipelineConfig, scorer: BatchScorer) -> list[str]:
    """The columns of a wrangled file that scoring reads: the passthrough and what a prediction reads."""
    from flightplan.features import input_columns

    part = config.source.partition_column
    return [c for c in dict.fromkeys([*scorer.passthrough, *input_columns(config)]) if c != part]


def day_files(folders: list[Path], target: Path) -> list[tuple[Path, Path]]:
    """Each Parquet file of the day folders, with its scored file's place in the same day's folder under
    ``target``."""
    return [
        (file, target / folder.name / file.name)
        for folder in folders
        for file in sorted(folder.glob("*.parquet"))
        if not file.name.startswith((".", "_"))
    ]


def champion_scorer(job: StageInput) -> BatchScorer:
    from flightplan.model.registry import CHAMPION, alias_version, decision_threshold, load_booster, load_version

    _, settings, config, _ = job.open()
    name = config.registered_model
    version = alias_version(settings, name, CHAMPION)
    if version is None:
        raise LookupError(f"{name} has no `{CHAMPION}` version: deploy a model before batch scoring")
    model = load_version(settings, name, version)
    time = [config.source.time_column] if config.source.time_column else []
    passthrough = [c for c in dict.fromkeys([*config.source.key, *time]) if c != config.source.partition_column]
    booster = load_booster(settings, name, version)
    return BatchScorer(
        version=version,
        booster=booster,
        booster_digest=hashlib.sha256(booster).hexdigest(),
        feature_map_json=model.feature_map.to_json(),
        derived=config.features.derived,
        threshold=decision_threshold(model.metadata),
        passthrough=passthrough,
    )


def score(job: StageInput) -> Path:
    """Scores the interval's wrangled rows with the champion; returns the manifest's path."""
    import mlflow

    from flightplan.data.partitions import count_rows, existing_partitions, replace_partitions, staging_area
    from flightplan.spark import get_spark, run_each
    from flightplan.tracking import stage_run

    job, settings, config, layout = job.open()
    scorer = champion_scorer(job)
    part = config.source.partition_column
    source = layout.dataset("wrangled")
    folders = existing_partitions(source, part, job.days)
    if not folders:
        raise FileNotFoundError(f"no wrangled data under {source} for {job.days[0]}..{job.days[-1]}: run wrangle first")
    with stage_run(settings, config, job.context, f"{config.name}-batch-inference", "score"):
        with staging_area(layout, "predictions", job.key) as staging:
            if pairs := day_files(folders, staging / "rows"):
                run_each(get_spark(settings), ScoreFiles(scorer, columns_read(config, scorer)), file_groups(pairs))
            replace_partitions(staging / "rows", layout.dataset("predictions"), part, job.days)
            rows = count_rows(layout.dataset("predictions"), part, job.days)
        total = sum(rows.values())
        manifest = BatchScoringManifest(
            model=config.registered_model,
            model_version=scorer.version,
            rows=rows,
            rows_total=total,
            output=str(layout.dataset("predictions")),
        )
        path = manifest.write(layout.manifest("batch_inference", job.key))
        mlflow.set_tag("flightplan.model_version", scorer.version)
        mlflow.log_metric("scored_rows", total)
        mlflow.log_artifact(str(path))
    return path
