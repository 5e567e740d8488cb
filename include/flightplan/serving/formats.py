"""The request formats of MLflow's scoring server (``/invocations``), read into the records the typed routes
answer, so that a client of ``mlflow models serve`` switches to a pipeline's route by changing the URL.

A body is a JSON object with exactly one of ``dataframe_split`` (``columns`` and row-major ``data``, as pandas'
``to_dict(orient="split")`` gives), ``dataframe_records`` (a list of records), ``instances`` (a list of
records) or ``inputs`` (a record of columns, or a list of records), and optionally ``params``, which a
pipeline's model does not take. Whatever the format, the values are validated column by column, one pydantic
pass per field, against the types the typed routes use; an error names the format, the field and the row.
A NaN is a missing value, as pandas writes one.

A ``text/csv`` body, which MLflow's server also takes, is a header line of field names and a line per row; an
empty value is a missing one (as pandas' ``to_csv`` writes it), the others are read as the field's type reads
their text.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic import ConfigDict, TypeAdapter, ValidationError

from flightplan.config import PipelineConfig
from flightplan.serving.inputs import record_fields, required_fields

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CSV = "csv"
PARAMS = "params"

Error = dict[str, Any]


class InvalidInvocation(ValueError):
    """A body that is not one of the formats, or whose values do not fit the fields; ``errors`` are in
    pydantic's shape (loc, msg, type), each loc starting at the body."""

    def __init__(self, errors: list[Error]) -> None:
        super().__init__(errors)
        self.errors = errors


def _error(loc: tuple[Any, ...], msg: str, kind: str = "value_error") -> Error:
    return {"loc": ("body", *loc), "msg": msg, "type": kind}


@dataclass(frozen=True)
class ColumnTypes:
    """How each field of a pipeline's records is validated as a whole column."""

    columns: dict[str, TypeAdapter[list[Any]]]
    required: set[str]
    max_rows: int

    @classmethod
    def of(cls, config: PipelineConfig, max_rows: int) -> ColumnTypes:
        finite_numbers = ConfigDict(allow_inf_nan=False)
        columns: dict[str, TypeAdapter[list[Any]]] = {  # the value types are built from the config at run time
            name: TypeAdapter(list[value_type | None], config=finite_numbers)  # type: ignore[valid-type]
            for name, value_type in record_fields(config).items()
        }
        return cls(columns, required_fields(config), max_rows)


def invocation_schema(types: ColumnTypes, record_schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of an ``/invocations`` body, for the API's documentation: its records are the typed
    routes' records; the column formats' values are positional, which a JSON schema cannot type."""
    fields, max_rows = list(types.columns), types.max_rows
    records = {"type": "array", "items": record_schema, "minItems": 1, "maxItems": max_rows}
    columns = {"type": "object", "properties": {key: {"type": "array"} for key in fields}}
    return {
        "type": "object",
        "description": f"exactly one of {', '.join(FORMATS)}, as MLflow's scoring server takes them",
        "properties": {
            "dataframe_split": {
                "type": "object",
                "properties": {
                    "columns": {"type": "array", "items": {"type": "string", "enum": fields}},
                    "data": {"type": "array", "items": {"type": "array"}, "minItems": 1, "maxItems": max_rows},
                },
                "required": ["columns", "data"],
            },
            "dataframe_records": records,
            "instances": records,
            "inputs": {"oneOf": [columns, records]},
            PARAMS: {"type": "object", "maxProperties": 0},
        },
        "minProperties": 1,
        "maxProperties": 2,
    }


def read_invocation(body: bytes, types: ColumnTypes) -> list[dict[str, Any]]:
    """The records of an ``/invocations`` body, validated; raises :class:`InvalidInvocation`."""
    try:
        parsed = pydantic_core.from_json(body)
    except ValueError as err:
        raise InvalidInvocation([_error((), f"Invalid JSON: {err}", "json_invalid")]) from None
    if not isinstance(parsed, dict):
        raise InvalidInvocation([_error((), f"expected a JSON object with one of {list(FORMATS)}")])
    found = [key for key in parsed if key in FORMATS]
    unknown = [key for key in parsed if key not in FORMATS and key != PARAMS]
    if len(found) != 1 or unknown:
        raise InvalidInvocation(
            [_error((), f"expected exactly one of {list(FORMATS)} (and optionally '{PARAMS}'), got {list(parsed)}")]
        )
    if parsed.get(PARAMS):
        raise InvalidInvocation([_error((PARAMS,), "this pipeline's model takes no params")])
    (kind,) = found
    columns, rows = _columns(kind, parsed[kind])
    if not 1 <= rows <= types.max_rows:
        raise InvalidInvocation([_error((kind,), f"expected 1 to {types.max_rows:,} rows, not {rows:,}")])
    return _validated_records(kind, columns, rows, types)


def read_csv_invocation(body: bytes, types: ColumnTypes) -> list[dict[str, Any]]:
    """The records of a ``text/csv`` body, validated; raises :class:`InvalidInvocation`. Blank lines are skipped,
    as pandas skips them; reading stops past the row limit."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InvalidInvocation([_error((CSV,), f"not UTF-8: {err}", "csv_invalid")]) from None
    try:
        read = (line for line in csv.reader(io.StringIO(text, newline=""), strict=True) if line)
        lines = list(itertools.islice(read, types.max_rows + 2))  # the header, the rows and one too many
    except csv.Error as err:
        raise InvalidInvocation([_error((CSV,), f"not a CSV: {err}", "csv_invalid")]) from None
    if not lines:
        raise InvalidInvocation([_error((CSV,), "expected a header line of field names, then a line per row")])
    header, *data = lines
    if not 1 <= len(data) <= types.max_rows:
        many = f"more than {types.max_rows:,}" if data else "0"
        raise InvalidInvocation([_error((CSV,), f"expected 1 to {types.max_rows:,} rows, not {many}")])
    content = {"columns": header, "data": [[value if value != "" else None for value in row] for row in data]}
    columns, rows = _split_columns(content, CSV)
    return _validated_records(CSV, columns, rows, types)


def _columns(kind: str, content: Any) -> tuple[dict[str, list[Any]], int]:
    """The body's values as columns of one length, and that length, whatever the format."""
    if kind == "dataframe_split":
        return _split_columns(content)
    if kind == "inputs" and isinstance(content, dict):
        return _named_columns(content)
    return _record_columns(kind, content)


def _split_columns(content: Any, kind: str = "dataframe_split") -> tuple[dict[str, list[Any]], int]:
    where = (kind,)
    if not isinstance(content, dict) or not isinstance(content.get("columns"), list):
        raise InvalidInvocation([_error(where, "expected an object with 'columns' and 'data'")])
    names, data = [str(name) for name in content["columns"]], content.get("data")
    if not isinstance(data, list) or not all(isinstance(row, list) for row in data):
        raise InvalidInvocation([_error((*where, "data"), "expected a list of rows, each a list of values")])
    if len(set(names)) != len(names):
        twice = sorted(name for name, count in Counter(names).items() if count > 1)
        raise InvalidInvocation([_error((*where, "columns"), f"columns named more than once: {twice}")])
    for row, values in enumerate(data):
        if len(values) != len(names):
            message = f"row {row} has {len(values)} values for {len(names)} columns"
            raise InvalidInvocation([_error((*where, "data", row), message)])
    columns = [list(values) for values in zip(*data, strict=True)] if data else [[] for _ in names]
    return dict(zip(names, columns, strict=True)), len(data)


def _named_columns(content: dict[str, Any]) -> tuple[dict[str, list[Any]], int]:
    lengths = {name: len(values) if isinstance(values, list) else None for name, values in content.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise InvalidInvocation([_error(("inputs",), f"expected lists of one length, one per column, got {lengths}")])
    return content, next(iter(lengths.values())) or 0


def _record_columns(kind: str, content: Any) -> tuple[dict[str, list[Any]], int]:
    if not isinstance(content, list):
        raise InvalidInvocation([_error((kind,), "expected a list of records")])
    names: dict[str, None] = {}
    for row, record in enumerate(content):
        if not isinstance(record, dict):
            raise InvalidInvocation([_error((kind, row), "expected a record: an object of field names and values")])
        names.update(dict.fromkeys(record))
    return {name: [record.get(name) for record in content] for name in names}, len(content)


def _validated_records(kind: str, columns: dict[str, list[Any]], rows: int, types: ColumnTypes) -> list[dict[str, Any]]:
    """The columns validated field by field (the first error of each named), as records without their
    missing values."""
    errors = [
        _error((kind, name), "Extra inputs are not permitted", "extra_forbidden")
        for name in columns
        if name not in types.columns
    ]
    valid: dict[str, list[Any]] = {}
    for name, adapter in types.columns.items():
        if name not in columns:
            if name in types.required:
                errors.append(_error((kind, name), "Field required", "missing"))
            continue
        # NaN is how pandas, and MLflow's serving input, write a missing value; Infinity stays refused.
        values = [None if isinstance(value, float) and math.isnan(value) else value for value in columns[name]]
        try:
            valid[name] = adapter.validate_python(values)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            errors.append(_error((kind, name, *first["loc"][:1]), first["msg"], first["type"]))
            continue
        if name in types.required and None in valid[name]:
            errors.append(_error((kind, name, valid[name].index(None)), "Field required", "missing"))
    if errors:
        raise InvalidInvocation(errors)
    return [{name: values[row] for name, values in valid.items() if values[row] is not None} for row in range(rows)]
