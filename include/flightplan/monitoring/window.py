"""The two frames a monitoring run compares: the current window of answered predictions (with the ground
truth sent back for them) and the reference, the training split of the model that answered them."""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flightplan.config import ColumnType, PipelineConfig
from flightplan.model.features import derive
from flightplan.serving.batch import PREDICTION, PROBABILITY, VERSION

if TYPE_CHECKING:
    from flightplan.settings import Settings

ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "long": pa.int64(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def parse_inputs(inputs: list[str], config: PipelineConfig) -> pa.Table:
    """The logged request records (JSON text, one per row) as typed columns, in one pass of Arrow's JSON
    reader rather than a ``json.loads`` per row (1M records: seconds instead of tens of seconds)."""
    from pyarrow import json as pa_json

    from flightplan.serving.inputs import request_fields

    schema = pa.schema([(name, ARROW_TYPES[kind]) for name, kind in request_fields(config).items()])
    if not inputs:
        return schema.empty_table()
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    text = "\n".join(inputs).encode()
    return pa_json.read_json(io.BytesIO(text), parse_options=options).select(schema.names)


def current_window(settings: Settings, config: PipelineConfig, start: datetime, end: datetime) -> pd.DataFrame:
    """Every prediction answered for the pipeline in [start, end): the request's fields, the derived features,
    what was answered and by which version, and the latest true label sent back (missing where none was)."""
    from flightplan.serving.store import answered_rows

    logged = answered_rows(settings.predictions_db_url, config.name, start, end)
    frame = derive(parse_inputs(logged["inputs"], config), config.features.derived).to_pandas()
    frame[PREDICTION] = [json.loads(value) for value in logged["prediction"]]
    frame[PROBABILITY] = np.asarray(logged["probability"], dtype=np.float64)
    frame[VERSION] = logged["model_version"]
    frame[config.label.name] = [None if label is None else json.loads(label) for label in logged["label"]]
    return frame


def reference_frame(settings: Settings, config: PipelineConfig, version: str) -> tuple[pd.DataFrame, str]:
    """The training side of the split the registry version was trained on, found through its lineage tags
    (version → training run → split manifest), and the manifest's path."""
    from flightplan.model.registry import training_run_id
    from flightplan.model.stages import read_side
    from flightplan.tracking import client

    run_id = training_run_id(settings, config.registered_model, version)
    manifest_path = client(settings).get_run(run_id).data.tags["flightplan.split_manifest"]
    with open(manifest_path) as manifest_file:
        manifest: dict[str, Any] = json.load(manifest_file)
    return read_side(manifest["paths"]["train"], config), manifest_path
