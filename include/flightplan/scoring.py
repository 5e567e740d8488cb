"""What a model answers: the prediction and probability a pipeline's model gives for its raw scores, the same
in the inference API, batch scoring, evaluation and monitoring; and the reference of those answers on the
training frame that monitoring compares live answers with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from flightplan.features import FeatureMap
from flightplan.files import write_parquet_atomic

PREDICTION, PROBABILITY, VERSION = "prediction", "probability", "model_version"
REFERENCE_FILE = "monitoring-reference.parquet"


def outputs(scores: np.ndarray, feature_map: FeatureMap, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The prediction and probability columns of a model's raw scores (one row of class probabilities per row
    for multiclass): binary, 0/1 at the threshold and P(1); multiclass, the most likely class and its
    probability; regression, the value and no probability."""
    if feature_map.task == "binary":
        return (scores >= threshold).astype("int32"), scores
    if feature_map.task == "multiclass":
        return np.asarray(feature_map.classes, dtype=object)[scores.argmax(axis=1)], scores.max(axis=1)
    return scores, np.full(len(scores), np.nan)


def with_outputs(frame: pd.DataFrame, scores: np.ndarray, feature_map: FeatureMap, threshold: float) -> pd.DataFrame:
    """``frame`` with the answers the service gives for a model's ``scores`` of it."""
    prediction, probability = outputs(scores, feature_map, threshold)
    return frame.assign(**{PREDICTION: prediction, PROBABILITY: probability})


def save_reference(
    frame: pd.DataFrame, scores: np.ndarray, feature_map: FeatureMap, threshold: float, run_dir: Path
) -> Path:
    """The monitoring reference of a model: the frame it was trained on with its answers for it, written once
    beside the run's frames, so that a monitoring check reads it instead of scoring it every night."""
    path = run_dir / REFERENCE_FILE
    table = pa.Table.from_pandas(with_outputs(frame, scores, feature_map, threshold), preserve_index=False)
    write_parquet_atomic(table, path)
    return path
