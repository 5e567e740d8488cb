"""Batch scoring: the champion scores the wrangled rows of an interval on Spark, and the predictions
replace that interval's partitions of the `predictions` dataset (so a re-run gives the same rows, never
duplicates).

Each Spark task scores Arrow batches with the native booster behind the champion (faster than
onnxruntime for large batches; the two were proven equal on the whole test set when the model was
packaged), encoded by the same :func:`encode` as training."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from flightplan.config import DerivedFeature
from flightplan.features import FeatureMap, derive, encode
from flightplan.manifests import BatchScoringManifest
from flightplan.scoring import PREDICTION, PROBABILITY, VERSION, outputs

if TYPE_CHECKING:
    from pathlib import Path

    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

    from flightplan.config import PipelineConfig
    from flightplan.data.stages import StageInput

# Per Python worker: each booster loaded once, found by the digest of its bytes (a version number alone is
# not enough: two pipelines, or two registries, have versions of the same number).
_boosters: dict[str, Any] = {}


@dataclass(frozen=True)
class BatchScorer:
    """Everything a Spark task needs to score rows (plain data, shipped to the executors)."""

    version: str
    booster: bytes
    booster_digest: str
    feature_map_json: str
    derived: list[DerivedFeature]
    threshold: float
    passthrough: list[str]  # columns copied to the output (key, time, partition)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import xgboost as xgb

        feature_map = FeatureMap.from_json(self.feature_map_json)
        if self.booster_digest not in _boosters:
            _boosters[self.booster_digest] = xgb.Booster(model_file=bytearray(self.booster))
        booster = _boosters[self.booster_digest]
        for batch in batches:
            if batch.num_rows == 0:
                continue
            frame = derive(pa.Table.from_batches([batch]), self.derived).to_pandas()
            scores = np.asarray(booster.inplace_predict(encode(frame, feature_map)), dtype=np.float64)
            output = frame[self.passthrough].copy()
            output[PREDICTION], output[PROBABILITY] = outputs(scores, feature_map, self.threshold)
            output[VERSION] = self.version
            yield pa.RecordBatch.from_pandas(output, preserve_index=False)

    def output_schema(self, input_schema: StructType) -> StructType:
        from pyspark.sql import types as T

        task = FeatureMap.from_json(self.feature_map_json).task
        prediction = {"binary": T.IntegerType(), "multiclass": T.StringType()}.get(task, T.DoubleType())
        fields = [input_schema[name] for name in self.passthrough]
        return T.StructType(
            [
                *fields,
                T.StructField(PREDICTION, prediction),
                T.StructField(PROBABILITY, T.DoubleType()),
                T.StructField(VERSION, T.StringType()),
            ]
        )


def champion_scorer(job: StageInput) -> BatchScorer:
    from flightplan.model.registry import CHAMPION, alias_version, decision_threshold, load_booster, load_version

    _, settings, config, _ = job.open()
    name = config.registered_model
    version = alias_version(settings, name, CHAMPION)
    if version is None:
        raise LookupError(f"{name} has no `{CHAMPION}` version: deploy a model before batch scoring")
    model = load_version(settings, name, version)
    time = [config.source.time_column] if config.source.time_column else []
    passthrough = list(dict.fromkeys([*config.source.key, *time, config.source.partition_column]))
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


def scored_rows(frame: DataFrame, scorer: BatchScorer, config: PipelineConfig) -> DataFrame:
    """The rows of ``frame`` with the scorer's outputs. Only the columns a prediction reads and the passthrough
    columns travel to the Python workers (Arrow carries every column it is given)."""
    from flightplan.features import input_columns

    needed = frame.select(*dict.fromkeys([*scorer.passthrough, *input_columns(config)]))
    return needed.mapInArrow(scorer, scorer.output_schema(needed.schema))


def score(job: StageInput) -> Path:
    """Scores the interval's wrangled rows with the champion; returns the manifest's path."""
    import mlflow

    from flightplan.data.partitions import count_rows, replace_partitions, staging_area
    from flightplan.data.rewrite import read_days
    from flightplan.spark import get_spark
    from flightplan.tracking import stage_run

    job, settings, config, layout = job.open()
    scorer = champion_scorer(job)
    part = config.source.partition_column
    with stage_run(settings, config, job.context, f"{config.name}-batch-inference", "score"):
        scored = scored_rows(read_days(get_spark(settings), layout, "wrangled", job.days), scorer, config)
        with staging_area(layout, "predictions", job.key) as staging:
            scored.write.partitionBy(part).parquet(str(staging / "rows"))
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
