"""What a prediction request carries and how a record becomes the model's input row.

A request holds raw fields, named and typed as in the pipeline config: the inputs of the features (a
derived feature's source column rather than the feature). :class:`RowEncoder` applies what wrangling and
feature derivation did to the training rows (trim, fill, time parts in their time zone, category codes),
in plain Python per record, which is what a one-row request can afford; a test proves it gives the
training encoder's matrix bit for bit.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, create_model

from flightplan.config import ColumnType, PipelineConfig
from flightplan.model.features import FeatureMap, input_columns

PYTHON_TYPES: dict[ColumnType, type] = {
    "string": str,
    "int": int,
    "long": int,
    "double": float,
    "boolean": bool,
    "date": date,
    "timestamp": datetime,
}


def _part(value: datetime, part: str) -> int:
    match part:
        case "hour":
            return value.hour
        case "day_of_week":  # Monday is 0, as in training
            return value.weekday()
        case "day_of_month":
            return value.day
        case "day_of_year":
            return value.timetuple().tm_yday
        case "week":
            return value.isocalendar().week
        case "month":
            return value.month
        case "quarter":
            return (value.month - 1) // 3 + 1
    raise ValueError(f"unknown time part '{part}'")


def request_fields(config: PipelineConfig) -> dict[str, ColumnType]:
    """The raw fields of a request and their types; a derived feature's source column is required."""
    return {name: config.column(name).type for name in input_columns(config)}


def json_records(frame: pd.DataFrame, fields: list[str]) -> list[dict[str, Any]]:
    """Rows as a client sends them: the request fields as JSON values, missing ones left out."""
    rows = json.loads(frame[fields].to_json(orient="records", date_format="iso", date_unit="us"))
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def record_model(config: PipelineConfig) -> type[BaseModel]:
    """The pydantic model of one record (documented in OpenAPI): unknown fields are refused, a missing
    field is a missing value, except the columns time parts are derived from, which are required."""
    required = {d.column for d in config.features.derived}
    fields: dict[str, Any] = {}
    for name, kind in request_fields(config).items():
        python_type = PYTHON_TYPES[kind]
        fields[name] = (python_type, ...) if name in required else (python_type | None, None)
    return create_model(
        f"{config.name.title().replace('_', '')}Record",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
        **fields,
    )


class InvalidRecord(ValueError):
    """A record that passed its schema but cannot be encoded; the message names the record and field."""


class RowEncoder:
    """Encodes records (dicts of raw fields) into the model's float32 matrix, one pass per record."""

    def __init__(self, config: PipelineConfig, feature_map: FeatureMap) -> None:
        available = set(request_fields(config)) | {d.name for d in config.features.derived}
        missing = [name for name in feature_map.names if name not in available]
        if missing:
            raise ValueError(
                f"the model needs feature(s) {missing} that pipeline '{config.name}' does not take as input"
            )
        self.trim = config.wrangle.trim_strings
        self.fill = feature_map.fill
        derived = {d.name: d for d in config.features.derived}
        self.steps: list[tuple[str, Any]] = []
        for feature in feature_map.features:
            if feature.name in derived:
                spec = derived[feature.name]
                self.steps.append(("derived", (spec.column, spec.part, ZoneInfo(spec.timezone))))
            elif feature.kind == "categorical":
                self.steps.append(
                    ("categorical", (feature.name, {c: float(i) for i, c in enumerate(feature.categories)}))
                )
            else:
                self.steps.append(("numeric", feature.name))

    def value(self, record: dict[str, Any], name: str) -> Any:
        value = record.get(name)
        if self.trim and isinstance(value, str):
            value = value.strip() or None
        return self.fill.get(name) if value is None else value

    def encode(self, records: list[dict[str, Any]]) -> np.ndarray:
        matrix = np.full((len(records), len(self.steps)), np.nan, dtype=np.float32)
        # Beyond float32's range a number becomes inf, as it does in the training encoder.
        with np.errstate(over="ignore"):
            self._fill_rows(records, matrix)
        return matrix

    def _fill_rows(self, records: list[dict[str, Any]], matrix: np.ndarray) -> None:
        for row, record in enumerate(records):
            for position, (kind, spec) in enumerate(self.steps):
                if kind == "numeric":
                    value = self.value(record, spec)
                    if value is not None:
                        try:
                            number = float(value)
                        except OverflowError as err:
                            raise InvalidRecord(f"record {row}: {spec}={value} is out of range") from err
                        matrix[row, position] = number if math.isfinite(number) else np.nan
                elif kind == "categorical":
                    value = self.value(record, spec[0])
                    if value is not None:
                        matrix[row, position] = spec[1].get(str(value), np.nan)
                else:
                    column, part, zone = spec
                    moment = self.value(record, column)
                    if moment is not None:
                        if moment.tzinfo is None:  # timestamps are UTC instants everywhere in the pipeline
                            moment = moment.replace(tzinfo=UTC)
                        try:
                            local = moment.astimezone(zone)
                        except OverflowError as err:
                            raise InvalidRecord(f"record {row}: {column}={moment.isoformat()} is out of range") from err
                        matrix[row, position] = _part(local, part)
