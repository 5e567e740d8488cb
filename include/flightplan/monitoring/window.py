"""The two frames a monitoring run compares: the current window of answered predictions (with the ground
truth sent back for them) and the reference, the training split of the model that answered them."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flightplan.config import PipelineConfig
from flightplan.features import derive
from flightplan.scoring import PREDICTION, PROBABILITY, REFERENCE_FILE, VERSION, save_reference

if TYPE_CHECKING:
    from flightplan.settings import Settings


def decoded_values(texts: pa.ChunkedArray) -> Any:
    """JSON texts (None: missing) as a column's values: numbers, what binary and regression answers and labels
    are, by Arrow's cast (ints without a gap stay ints, as pandas would make them); anything else (a class named
    by a string) in one ``json.loads`` rather than one per value."""
    for kind in (pa.int64(), pa.float64()):
        try:
            return texts.cast(kind).to_pandas().to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    values = texts.to_pylist()
    return list(json.loads("[" + ",".join("null" if text is None else text for text in values) + "]"))


def current_window(settings: Settings, config: PipelineConfig, start: datetime, end: datetime) -> pd.DataFrame:
    """Every prediction answered for the pipeline in [start, end): the request's fields, the derived features,
    what was answered and by which version, and the latest true label sent back (missing where none was)."""
    from flightplan.prediction_log import (
        LOG_LABEL,
        LOG_PREDICTION,
        LOG_PROBABILITY,
        LOG_VERSION,
        answered_table,
        record_schema,
    )
    from flightplan.serving.inputs import request_fields

    answered = answered_table(settings.predictions_db_url, config.name, start, end, record_schema(config))
    frame = derive(answered.select(list(request_fields(config))), config.features.derived).to_pandas()
    frame[PREDICTION] = decoded_values(answered.column(LOG_PREDICTION))
    frame[PROBABILITY] = answered.column(LOG_PROBABILITY).to_numpy(zero_copy_only=False).astype(np.float64)
    frame[config.label.name] = decoded_values(answered.column(LOG_LABEL))
    frame[VERSION] = answered.column(LOG_VERSION).to_numpy(zero_copy_only=False)
    return frame


class VersionScores:
    """The scores a registry version gives a frame (its native booster, proven equal to its ONNX model)."""

    def __init__(self, settings: Settings, config: PipelineConfig, version: str) -> None:
        import xgboost as xgb

        from flightplan.model.registry import decision_threshold, load_booster, version_metadata

        metadata, self.feature_map = version_metadata(settings, config.registered_model, version)
        self.threshold = decision_threshold(metadata)
        self._booster = xgb.Booster(model_file=bytearray(load_booster(settings, config.registered_model, version)))

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        from flightplan.features import encode

        scores = np.asarray(self._booster.inplace_predict(encode(frame, self.feature_map)), dtype=np.float64)
        return scores.reshape(len(frame), -1) if self.feature_map.task == "multiclass" else scores


def reference_frame(settings: Settings, config: PipelineConfig, version: str) -> tuple[pd.DataFrame, Path, str]:
    """The monitoring reference of a registry version, found through its lineage tags (version → training
    run → its folder), its file, and the manifest of the split it was taken from. A version trained before
    models kept one is scored once now and its reference kept."""
    from flightplan.layout import Layout
    from flightplan.model.registry import split_manifest_path, training_run_id

    run_id = training_run_id(settings, config.registered_model, version)
    manifest_path = split_manifest_path(settings, run_id)
    run_dir = Layout(settings, config).model_run(run_id)
    path = run_dir / REFERENCE_FILE
    if not path.exists():
        trained_on = run_dir / "frames" / "train.parquet"
        if not trained_on.exists():
            raise FileNotFoundError(f"version {version}: neither {path} nor its training frame {trained_on} exists")
        frame = pd.read_parquet(trained_on)
        scorer = VersionScores(settings, config, version)
        save_reference(frame, scorer(frame), scorer.feature_map, scorer.threshold, run_dir)
    return pd.read_parquet(path), path, manifest_path
