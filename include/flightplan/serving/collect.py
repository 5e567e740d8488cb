"""Data collection: raw records posted to the API become a landing file that the next ingestion run of
their day picks up.

Each record is checked against the pipeline's source schema (types, required columns, ranges, allowed
values); a bad record is refused with its index and the reason, the good ones are written. The file is
written under a temporary name, flushed to disk and renamed, so ingestion never sees half a file."""

from __future__ import annotations

import csv
import io
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from flightplan.config import ColumnSpec, PipelineConfig
from flightplan.layout import Layout
from flightplan.serving.inputs import python_type


class SnapshotSource(ValueError):
    """Records posted to a pipeline whose data is one snapshot file, which has no landing zone to take them."""


@dataclass(frozen=True)
class Collected:
    accepted: int
    refused: list[dict[str, Any]] = field(default_factory=list)  # {"record": index, "reason": ...}
    file: str | None = None


def _one_of(allowed: list[Any]) -> AfterValidator:
    def check(value: Any) -> Any:
        if value is not None and value not in allowed:
            raise ValueError(f"must be one of {allowed}")
        return value

    return AfterValidator(check)


def _field(column: ColumnSpec, config: PipelineConfig) -> tuple[Any, Any]:
    field_type: Any = python_type(column.type, config)
    rules: list[Any] = []
    if column.min is not None or column.max is not None:
        rules.append(Field(ge=column.min, le=column.max))
    if column.allowed is not None:
        rules.append(_one_of(column.allowed))
    required = column.max_null_fraction == 0
    annotated = Annotated[field_type, *rules] if rules else field_type
    return (annotated, ...) if required else (annotated | None, None)


def source_model(config: PipelineConfig) -> type[BaseModel]:
    """One raw source record as the landing files hold it: every source column, typed, with its rules."""
    fields: dict[str, Any] = {column.name: _field(column, config) for column in config.source.columns}
    return create_model(
        f"{config.name.title().replace('_', '')}SourceRecord",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
        **fields,
    )


def _cell(value: Any, column: ColumnSpec) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime(column.format) if column.format else moment.isoformat()
    return str(value)


def collect(layout: Layout, records: list[dict[str, Any]], received: datetime | None = None) -> Collected:
    """Checks ``records`` and writes the good ones to the landing folder of the day they were received."""
    config = layout.config
    if config.source.snapshot is not None:
        raise SnapshotSource(
            f"pipeline '{config.name}' reads the snapshot {layout.snapshot}: add new records to it, not to a landing"
            " zone"
        )
    model = source_model(config)
    good: list[BaseModel] = []
    refused: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        try:
            good.append(model.model_validate(record))
        except ValidationError as err:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in err.errors())
            refused.append({"record": index, "reason": reasons})
    if not good:
        return Collected(0, refused)
    received = received or datetime.now(UTC)
    folder = layout.landing / received.date().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    columns = config.source.columns
    cells = [[_cell(row.model_dump()[c.name], c) for c in columns] for row in good]
    target = folder / f"{config.name}-api-{received:%H%M%S}-{uuid.uuid4().hex[:12]}.{config.source.format}"
    partial = target.with_name(f".{target.name}.partial")  # hidden: ingestion skips it until it is whole
    if config.source.format == "parquet":
        # Text, as a CSV drop would hold it: ingestion converts each value to its column's type.
        table = pa.table({c.file_name: [row[i] or None for row in cells] for i, c in enumerate(columns)})
        pq.write_table(table, partial)
        with partial.open("rb+") as out:
            os.fsync(out.fileno())
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=config.source.delimiter, lineterminator="\n")
        writer.writerow([c.file_name for c in columns])
        writer.writerows(cells)
        with partial.open("w", encoding="utf-8") as out:
            out.write(buffer.getvalue())
            out.flush()
            os.fsync(out.fileno())
    partial.replace(target)
    _sync_dir(folder)
    return Collected(len(good), refused, str(target))


def _sync_dir(folder: Path) -> None:
    """The rename itself survives a crash only once the folder's entry is on disk."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
