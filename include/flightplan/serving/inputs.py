"""What a prediction request carries and how a record becomes the model's input row.

A request holds raw fields, named and typed as in the pipeline config: the inputs of the features (a
derived feature's source column rather than the feature). :class:`RowEncoder` applies what wrangling and
feature derivation did to the training rows (trim, fill, time parts in their time zone, category codes),
in plain Python, column by column, cheap for one row as for ten thousand; a test proves it gives the
training encoder's matrix bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any, NotRequired, Required
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from pydantic import BeforeValidator, ConfigDict, StringConstraints
from typing_extensions import TypedDict

from flightplan.config import ColumnType, PipelineConfig
from flightplan.features import FeatureMap, input_columns

# pydantic needs typing_extensions' TypedDict before Python 3.12; its functional form builds one from config.
make_typed_dict: Any = TypedDict

PYTHON_TYPES: dict[ColumnType, type] = {
    "string": str,
    "int": int,
    "long": int,
    "double": float,
    "boolean": bool,
    "date": date,
    "timestamp": datetime,
}


TIME_PARTS: dict[str, Callable[[datetime], int]] = {
    "hour": lambda moment: moment.hour,
    "day_of_week": lambda moment: moment.weekday(),  # Monday is 0, as in training
    "day_of_month": lambda moment: moment.day,
    "day_of_year": lambda moment: moment.timetuple().tm_yday,
    "week": lambda moment: moment.isocalendar().week,
    "month": lambda moment: moment.month,
    "quarter": lambda moment: (moment.month - 1) // 3 + 1,
}


def _fits_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def python_type(kind: ColumnType, config: PipelineConfig) -> Any:
    """The type a request field of ``kind`` is validated as: text no longer than the pipeline allows; a moment
    read by ``iso_moment`` first."""
    if kind == "string":
        return Annotated[str, StringConstraints(max_length=config.deployment.max_string_length)]
    if kind == "timestamp":
        return Annotated[datetime, BeforeValidator(iso_moment)]
    return PYTHON_TYPES[kind]


def iso_moment(value: Any) -> Any:
    """A text that starts with an ISO 8601 calendar date (YYYY-MM-DD) as Python reads it, with a
    ``datetime.timezone`` for its offset; any other value as it came, for pydantic to read or refuse (digits alone
    are seconds since the epoch to pydantic, a date to Python). pydantic gives each moment a zone object of its own
    that the cyclic collector tracks: at 1000-row requests, those of the requests in flight and of the shadow's
    backlog were two thirds of what each full collection walked (docs/performance.md)."""
    if type(value) is str and value[4:5] == "-" and value[7:8] == "-":
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
    return value


def request_fields(config: PipelineConfig) -> dict[str, ColumnType]:
    """The raw fields of a request and their types; a derived feature's source column is required."""
    return {name: config.column(name).type for name in input_columns(config)}


def json_records(frame: pd.DataFrame, fields: list[str]) -> list[dict[str, Any]]:
    """Rows as a client sends them: the request fields as JSON values, missing ones left out."""
    rows = json.loads(frame[fields].to_json(orient="records", date_format="iso", date_unit="us"))
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def record_fields(config: PipelineConfig) -> dict[str, Any]:
    """Each field a record may carry and the type of its value: the request fields, then the source key's
    columns (optional: a record that carries them can get its true label through the label step)."""
    fields = {name: python_type(kind, config) for name, kind in request_fields(config).items()}
    for name in config.source.key:
        fields.setdefault(name, python_type(config.column(name).type, config))
    return fields


def required_fields(config: PipelineConfig) -> set[str]:
    """The fields a record cannot leave out: the columns time parts are derived from."""
    return {d.column for d in config.features.derived}


def record_type(config: PipelineConfig) -> type:
    """The typed dict of one record (documented in OpenAPI): the request fields and the source key's columns;
    unknown fields are refused, a missing field is a missing value, except the columns time parts are derived
    from, which are required. A typed dict rather than a model: pydantic validates it from the request's
    JSON bytes into the plain dicts the encoder and the log take, with no model object per record."""
    required = required_fields(config)
    fields = {
        name: Required[value_type] if name in required else NotRequired[value_type | None]
        for name, value_type in record_fields(config).items()
    }
    record: Any = make_typed_dict(f"{config.name.title().replace('_', '')}Record", fields)
    record.__pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)
    return record  # type: ignore[no-any-return]


class InvalidRecord(ValueError):
    """A record that passed its schema but cannot be encoded; the message names the record and field."""


class RowEncoder:
    """Encodes records (dicts of raw fields) into the model's float32 matrix, one pass per feature."""

    def __init__(self, config: PipelineConfig, feature_map: FeatureMap) -> None:
        available = set(request_fields(config)) | {d.name for d in config.features.derived}
        missing = [name for name in feature_map.names if name not in available]
        if missing:
            raise ValueError(
                f"the model needs feature(s) {missing} that pipeline '{config.name}' does not take as input"
            )
        # Only text can carry blanks: the request schema has already made every other field a number or time.
        self.trimmed = (
            {name for name, kind in request_fields(config).items() if kind == "string"}
            if config.wrangle.trim_strings
            else set()
        )
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

    def values(self, records: list[dict[str, Any]], name: str) -> list[Any]:
        """The field ``name`` of every record, trimmed and filled as wrangling does."""
        values = [record.get(name) for record in records]
        if name in self.trimmed:
            values = [(value.strip() or None) if isinstance(value, str) else value for value in values]
        fill = self.fill.get(name)
        if fill is not None:
            values = [fill if value is None else value for value in values]
        return values

    def encode(self, records: list[dict[str, Any]]) -> np.ndarray:
        columns: list[list[Any]] = []
        local_times: dict[tuple[str, ZoneInfo], list[datetime | None]] = {}
        for kind, spec in self.steps:
            if kind == "numeric":
                columns.append(self.values(records, spec))
            elif kind == "categorical":
                name, codes = spec
                columns.append(
                    [
                        math.nan if value is None else codes.get(str(value), math.nan)
                        for value in self.values(records, name)
                    ]
                )
            else:
                column, part, zone = spec
                if (column, zone) not in local_times:
                    local_times[column, zone] = self._local_times(records, column, zone)
                extract = TIME_PARTS[part]
                columns.append([None if moment is None else extract(moment) for moment in local_times[column, zone]])
        try:
            numbers = np.array(columns, dtype=np.float64)  # None becomes NaN
        except OverflowError as err:
            raise self._out_of_range(columns) from err
        numbers[~np.isfinite(numbers)] = np.nan
        # Beyond float32's range a number becomes inf, as it does in the training encoder.
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(numbers.T, dtype=np.float32)

    def _out_of_range(self, columns: list[list[Any]]) -> InvalidRecord:
        """Names the first number too large for a float (only an integer can be)."""
        row, name, value = next(
            (row, spec, value)
            for (kind, spec), values in zip(self.steps, columns, strict=True)
            if kind == "numeric"
            for row, value in enumerate(values)
            if isinstance(value, int) and not _fits_float(value)
        )
        return InvalidRecord(f"record {row}: {name}={value} is out of range")

    def _local_times(self, records: list[dict[str, Any]], column: str, zone: ZoneInfo) -> list[datetime | None]:
        local: list[datetime | None] = []
        for row, moment in enumerate(self.values(records, column)):
            if moment is None:
                local.append(None)
                continue
            if moment.tzinfo is None:  # timestamps are UTC instants everywhere in the pipeline
                moment = moment.replace(tzinfo=UTC)
            try:
                local.append(moment.astimezone(zone))
            except OverflowError as err:
                raise InvalidRecord(f"record {row}: {column}={moment.isoformat()} is out of range") from err
        return local
