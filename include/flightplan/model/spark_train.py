"""Training on a Spark session with ``xgboost.spark``, for train sides that outgrow one process.

The frames are read by Spark and encoded on the executors with the same :func:`encode` as the local
engine, so both engines see identical matrices; the result is a plain XGBoost booster, which evaluation,
ONNX packaging and serving treat exactly like a locally trained one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import xgboost as xgb

from flightplan.features import FeatureMap, encode, encode_label

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

FEATURES = "features"
LABEL = "label"
IS_VALIDATION = "is_validation"
# Set by xgboost.spark itself (the classifier picks its objective and class count from the label, and
# each worker's threads come from spark.task.cpus).
MANAGED_BY_SPARK = ("objective", "num_class", "nthread")


def encoded_frame(spark: SparkSession, frames_dir: Path, feature_map: FeatureMap) -> DataFrame:
    """Train and validation rows as one float-array feature column, the label code and a validation flag.
    (One array column rather than f0..fN columns: xgboost.spark fails on an empty batch of those.)"""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    wanted = [*feature_map.names, feature_map.label]
    sides = [
        spark.read.parquet(str(frames_dir / f"{side}.parquet")).select(*wanted).withColumn(IS_VALIDATION, F.lit(flag))
        for side, flag in (("train", False), ("validation", True))
    ]
    schema = T.StructType(
        [
            T.StructField(FEATURES, T.ArrayType(T.FloatType())),
            T.StructField(LABEL, T.DoubleType()),
            T.StructField(IS_VALIDATION, T.BooleanType()),
        ]
    )
    width = len(feature_map.features)

    def encode_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            frame = batch.to_pandas()
            matrix = encode(frame, feature_map)
            offsets = np.arange(0, (len(matrix) + 1) * width, width, dtype=np.int32)
            yield pa.RecordBatch.from_arrays(
                [
                    pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type=pa.float32())),
                    pa.array(encode_label(frame, feature_map), type=pa.float64()),
                    batch.column(IS_VALIDATION),
                ],
                names=[FEATURES, LABEL, IS_VALIDATION],
            )

    return sides[0].unionByName(sides[1]).mapInArrow(encode_batches, schema)


def fit_on_spark(
    spark: SparkSession,
    frames_dir: Path,
    feature_map: FeatureMap,
    params: dict[str, Any],
    rounds: int,
    workers: int | None,
    callbacks: list[xgb.callback.TrainingCallback],
) -> xgb.Booster:
    from xgboost.spark import SparkXGBClassifier, SparkXGBRegressor

    estimator_class = SparkXGBRegressor if feature_map.task == "regression" else SparkXGBClassifier
    estimator = estimator_class(
        features_col=FEATURES,
        feature_names=feature_map.model_names,
        label_col=LABEL,
        validation_indicator_col=IS_VALIDATION,
        feature_types=feature_map.model_types,
        num_workers=workers or spark.sparkContext.defaultParallelism,
        # Training runs as a barrier stage, which cannot sit directly on the union of the two sides.
        force_repartition=True,
        n_estimators=rounds,
        callbacks=callbacks,
        **{k: v for k, v in params.items() if k not in MANAGED_BY_SPARK},
    )
    return estimator.fit(encoded_frame(spark, frames_dir, feature_map)).get_booster()
