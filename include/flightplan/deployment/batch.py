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
from functools import cached_property, partial
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
BATCH_ROWS = 262_144  # rows a task scores at once: its memory does not grow with its files
# The prediction column's type by task.
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

    @cached_property
    def feature_map(self) -> FeatureMap:
        return FeatureMap.from_json(self.feature_map_json)

    def score(self, table: pa.Table, schema: pa.Schema | None = None) -> pa.Table:
        """The passthrough columns of ``table`` as they are, with the champion's prediction, probability and
        version; ``schema`` is ``output_schema`` of the table's, when the caller has it already."""
        schema = schema or self.output_schema(table.schema)
        if table.num_rows == 0:
            return schema.empty_table()
        frame = derive(table, self.derived).to_pandas()
        scores = np.asarray(self._booster().inplace_predict(encode(frame, self.feature_map)), dtype=np.float64)
        prediction, probability = outputs(scores, self.feature_map, self.threshold)
        columns = [table.column(name) for name in self.passthrough]
        columns += [pa.array(prediction), pa.array(probability, from_pandas=True)]  # NaN (regression): null
        columns.append(pa.repeat(pa.scalar(self.version), table.num_rows))
        return pa.Table.from_arrays(columns, schema=schema)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """The passthrough fields as the input has them, then the outputs, typed by the model's task."""
        task = self.feature_map.task
        outputs_fields = [
            pa.field(PREDICTION, PREDICTION_TYPES[task]),
            pa.field(PROBABILITY, pa.float64()),
            pa.field(VERSION, pa.string()),
        ]
        return pa.schema([input_schema.field(name) for name in self.passthrough] + outputs_fields)

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
class FilePiece:
    """Row groups of a wrangled file (all of them: None), the scored file they become, and their share of the
    file's bytes."""

    source: str
    row_groups: tuple[int, ...] | None
    target: str
    size: int


@dataclass(frozen=True)
class ScoreFiles:
    """A Spark task's work: each piece of its group read, scored and written, ``BATCH_ROWS`` at a time."""

    scorer: BatchScorer
    columns: list[str]  # what a prediction reads, and the passthrough

    def __call__(self, pieces: list[FilePiece]) -> None:
        from flightplan.files import replace_atomically

        for piece in pieces:
            replace_atomically(Path(piece.target), partial(self._write, piece))

    def _write(self, piece: FilePiece, path: Path) -> None:
        import pyarrow.parquet as pq

        reader = pq.ParquetFile(piece.source)
        try:
            missing = [name for name in self.columns if name not in reader.schema_arrow.names]
            if missing:
                raise ValueError(f"{piece.source} lacks column(s) {missing} that scoring reads")
            schema = self.scorer.output_schema(reader.schema_arrow)
            # One thread reads: the booster scores on the task's cores.
            batches = reader.iter_batches(
                BATCH_ROWS, row_groups=piece.row_groups, columns=self.columns, use_threads=False
            )
            with pq.ParquetWriter(path, schema) as writer:  # a piece with no rows makes a file of the schema
                for batch in batches:
                    writer.write_table(self.scorer.score(pa.Table.from_batches([batch]), schema))
        finally:
            reader.close()


def contiguous_runs(weights: list[int], count: int) -> list[list[int]]:
    """The indexes of ``weights`` cut into at most ``count`` runs of neighbours of about equal weight: each index
    goes to the run whose share of the total its middle falls in."""
    share = max(sum(weights), 1) / max(count, 1)
    runs: list[list[int]] = [[] for _ in range(count)]
    before = 0  # the weight of the indexes before this one
    for index, weight in enumerate(weights):
        runs[min(count - 1, int((before + weight / 2) / share))].append(index)
        before += weight
    return [run for run in runs if run]


def file_groups(pieces: list[FilePiece]) -> list[list[FilePiece]]:
    """The pieces cut into tasks of about ``TASK_BYTES``, ``MIN_TASKS`` at least while there are as many pieces,
    each task a run of neighbouring pieces (in day order)."""
    total = sum(piece.size for piece in pieces)
    tasks = min(len(pieces), max(MIN_TASKS, -(-total // TASK_BYTES)))
    return [[pieces[i] for i in run] for run in contiguous_runs([piece.size for piece in pieces], tasks)]


def columns_read(config: PipelineConfig, scorer: BatchScorer) -> list[str]:
    """The columns of a wrangled file that scoring reads: the passthrough and what a prediction reads."""
    from flightplan.features import input_columns

    part = config.source.partition_column
    return [c for c in dict.fromkeys([*scorer.passthrough, *input_columns(config)]) if c != part]


def day_files(folders: list[Path], target: Path) -> list[FilePiece]:
    """The pieces of each Parquet file of the day folders, each scored file in the same day's folder under
    ``target``."""
    return [
        piece
        for folder in folders
        for file in sorted(folder.glob("*.parquet"))
        if not file.name.startswith((".", "_"))
        for piece in file_pieces(file, target / folder.name)
    ]


def file_pieces(file: Path, folder: Path) -> list[FilePiece]:
    """The file as one piece, or, when it holds more than ``TASK_BYTES`` in several row groups, as runs of its row
    groups of about that size each (as Spark splits a large file), so that a large day is scored by several
    tasks."""
    import pyarrow.parquet as pq

    size = file.stat().st_size
    metadata = pq.read_metadata(file) if size > TASK_BYTES else None
    if metadata is None or metadata.num_row_groups < 2:
        return [FilePiece(str(file), None, str(folder / file.name), size)]
    weights = [metadata.row_group(index).total_byte_size for index in range(metadata.num_row_groups)]
    stem = file.name.removesuffix(".parquet")
    return [
        FilePiece(
            str(file),
            tuple(run),
            str(folder / f"{stem}-{number}.parquet"),
            size * sum(weights[i] for i in run) // sum(weights),
        )
        for number, run in enumerate(contiguous_runs(weights, -(-size // TASK_BYTES)))
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
