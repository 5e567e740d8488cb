"""Ingest: the landing files of an interval become typed, joined Parquet partitioned by day.

Spark spreads the work: each task parses line-aligned chunks of the landing files with pyarrow's
multi-threaded-capable C++ CSV reader (Spark's own CSV source is about three times slower here and
cannot say on which line a row failed), quarantines what does not parse with file, line and reason,
and hands typed Arrow batches back to Spark, which joins the dimension tables and writes Parquet.
Each day's partition is then swapped in whole, so re-running an interval replaces it.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as pads

from flightplan.config import ColumnSpec, DimensionSpec
from flightplan.data.parse import Chunk, parse_chunk, quarantine_every_line
from flightplan.data.partitions import (
    count_rows,
    days_in,
    existing_partitions,
    fresh_dir,
    interval_key,
    replace_partitions,
    write_json_atomic,
    write_parquet_atomic,
)
from flightplan.layout import Layout
from flightplan.spark import ARROW_TYPES, get_spark, spark_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CHUNK_BYTES = 64 << 20
STAGE = "curated"


class NoLandingData(FileNotFoundError):
    """The interval has no landing files at all: the feed did not arrive."""


def ingest(layout: Layout, start: date, end: date, spark: SparkSession | None = None) -> Path:
    """Ingest the days of [start, end); returns the path of the ingest manifest."""
    config = layout.config
    days = days_in(start, end)
    plan = plan_chunks(layout, days)
    if not plan["chunks"] and not plan["files"]:
        raise NoLandingData(
            f"no landing files for {start}..{end} under {layout.landing} (one YYYY-MM-DD folder per day)"
        )
    spark = spark or get_spark(layout.settings)
    key = interval_key(start, end)
    staging = fresh_dir(layout.staging(STAGE, key))
    rows_dir, quarantine_dir = staging / "rows", staging / "quarantine"
    part = config.source.partition_column

    chunks: list[Chunk] = plan["chunks"]
    parsed_schema = spark_schema([(c.name, c.type) for c in config.source.columns] + [(part, "string")])
    task = _ChunkParser(
        config.source.columns, config.source.delimiter, config.source.null_values, part, str(quarantine_dir)
    )
    if chunks:
        slices = min(len(chunks), spark.sparkContext.defaultParallelism * 4)
        chunk_rows = [(c.index, json.dumps(asdict(c))) for c in chunks]
        parsed = spark.createDataFrame(
            spark.sparkContext.parallelize(chunk_rows, slices), "index int, chunk string"
        ).mapInArrow(task, parsed_schema)
        joined, dimension_notes = join_dimensions(spark, layout, parsed)
        output = [c.name for c in config.all_columns] + [part]
        joined.select(*output).write.mode("overwrite").partitionBy(part).parquet(str(rows_dir))
    else:
        dimension_notes = {}

    replace_partitions(rows_dir, layout.dataset(STAGE), part, days)
    replace_partitions(quarantine_dir, layout.quarantine("ingest"), part, days)
    rows = count_rows(layout.dataset(STAGE), part, days)
    quarantined = count_rows(layout.quarantine("ingest"), part, days)
    reasons = _quarantine_reasons(layout.quarantine("ingest"), part, days)
    shutil.rmtree(staging)
    manifest = {
        "pipeline": config.name,
        "stage": "ingest",
        "interval": {"start": start.isoformat(), "end": end.isoformat()},
        "days_without_landing": plan["missing_days"],
        "files": plan["files"],
        "rows": rows,
        "quarantined": quarantined,
        "rows_total": sum(rows.values()),
        "quarantined_total": sum(quarantined.values()),
        "quarantine_reasons": reasons,
        "dimensions": dimension_notes,
        "output": str(layout.dataset(STAGE)),
        "quarantine": str(layout.quarantine("ingest")),
    }
    return write_json_atomic(manifest, layout.manifest("ingest", key))


def plan_chunks(layout: Layout, days: list[date]) -> dict[str, Any]:
    """List the landing files of the days, read their headers, and cut them into line-aligned chunks."""
    config = layout.config
    expected = [c.name for c in config.source.columns]
    chunks: list[Chunk] = []
    files: list[dict[str, Any]] = []
    missing_days = []
    for day in days:
        folder = layout.landing / day.isoformat()
        paths = (
            sorted(p for p in folder.glob("*") if p.is_file() and not p.name.startswith((".", "_")))
            if folder.is_dir()
            else []
        )
        if not folder.is_dir():
            missing_days.append(day.isoformat())
        for path in paths:
            header, body_start = read_header(path, config.source.delimiter)
            note: dict[str, Any] = {"path": str(path), "day": day.isoformat(), "bytes": path.stat().st_size}
            files.append(note)
            if header is None:
                note["problem"] = "empty file"
                continue
            rejected = None
            repeated = sorted(n for n, k in Counter(header).items() if k > 1)
            if repeated:
                rejected = f"header repeats column(s) {repeated}"
            elif not set(header) & set(expected):
                rejected = f"header has none of the expected columns (is the delimiter '{config.source.delimiter}'?)"
            missing = [n for n in expected if n not in header]
            unexpected = [n for n in header if n not in expected]
            if missing:
                note["missing_columns"] = missing
            if unexpected:
                note["unexpected_columns"] = unexpected
            if rejected:
                note["problem"] = rejected
            for start, end in line_aligned_ranges(path, body_start, CHUNK_BYTES):
                chunks.append(
                    Chunk(
                        path=str(path),
                        day=day.isoformat(),
                        start=start,
                        end=end,
                        first_line=2 if start == body_start else None,
                        header=tuple(header),
                        index=len(chunks),
                        rejected_because=rejected,
                    )
                )
    return {"chunks": chunks, "files": files, "missing_days": missing_days}


def read_header(path: Path, delimiter: str) -> tuple[list[str] | None, int]:
    """The column names of a CSV file and the byte offset where its first data line starts."""
    with path.open("rb") as handle:
        first = handle.readline()
    if not first.strip():
        return None, len(first)
    text = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    names = next(csv.reader([text], delimiter=delimiter))
    return [n.strip() for n in names], len(first)


def line_aligned_ranges(path: Path, start: int, size: int) -> list[tuple[int, int]]:
    """Byte ranges of about ``size`` bytes from ``start`` to the end of the file, each ending just after a newline."""
    total = path.stat().st_size
    ranges = []
    with path.open("rb") as handle:
        while start < total:
            end = min(start + size, total)
            if end < total:
                handle.seek(end)
                end += len(handle.readline())
            ranges.append((start, end))
            start = end
    return ranges


def count_newlines_before(path: str, offset: int) -> int:
    count, block = 0, 16 << 20
    with open(path, "rb") as handle:
        remaining = offset
        while remaining > 0:
            data = handle.read(min(block, remaining))
            if not data:
                break
            count += data.count(b"\n")
            remaining -= len(data)
    return count


class _ChunkParser:
    """The function Spark runs on each task (``mapInArrow``): parse chunks, write their quarantine
    records to a file named after the chunk (so a retried task overwrites, never duplicates), and
    yield the typed rows."""

    def __init__(
        self,
        columns: list[ColumnSpec],
        delimiter: str,
        null_values: list[str],
        partition_column: str,
        quarantine_dir: str,
    ) -> None:
        self.columns_json = json.dumps([c.model_dump() for c in columns])
        self.delimiter = delimiter
        self.null_values = null_values
        self.partition_column = partition_column
        self.quarantine_dir = quarantine_dir

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        columns = [ColumnSpec.model_validate(c) for c in json.loads(self.columns_json)]
        for batch in batches:
            for descriptor in batch.column("chunk").to_pylist():
                chunk = Chunk(**{**json.loads(descriptor), "header": tuple(json.loads(descriptor)["header"])})
                with open(chunk.path, "rb") as handle:
                    handle.seek(chunk.start)
                    data = handle.read(chunk.end - chunk.start)
                if chunk.rejected_because:
                    parsed = quarantine_every_line(data, chunk)
                else:
                    parsed = parse_chunk(data, chunk, columns, self.delimiter, self.null_values)
                quarantine = parsed.quarantine
                if quarantine.num_rows:
                    if chunk.first_line is None:
                        shift = count_newlines_before(chunk.path, chunk.start)
                        lines = pa.compute.add(quarantine.column("line"), shift)
                        quarantine = quarantine.set_column(1, "line", lines)
                    target = (
                        Path(self.quarantine_dir)
                        / f"{self.partition_column}={chunk.day}"
                        / f"chunk-{chunk.index:06d}.parquet"
                    )
                    write_parquet_atomic(quarantine, target)
                rows = parsed.rows
                if rows.num_rows:
                    rows = rows.append_column(self.partition_column, pa.array([chunk.day] * rows.num_rows, pa.string()))
                    yield from rows.to_batches()


def read_dimension(layout: Layout, dimension: DimensionSpec) -> tuple[pa.Table, dict[str, Any]]:
    """A dimension table, typed with its schema, one row per key (the first one wins, and duplicates are counted)."""
    path = layout.dimension(dimension)
    if not path.exists():
        raise FileNotFoundError(f"dimension '{dimension.name}': {path} does not exist")
    if dimension.format == "parquet":
        table = pads.dataset(path).to_table(columns=[c.name for c in dimension.columns])
        table = table.cast(pa.schema([(c.name, ARROW_TYPES[c.type]) for c in dimension.columns]))
        dropped = 0
    else:
        header, body_start = read_header(path, ",")
        if header is None:
            raise ValueError(f"dimension '{dimension.name}': {path} is empty")
        data = path.read_bytes()[body_start:]
        chunk = Chunk(str(path), "", body_start, body_start + len(data), 2, tuple(header), 0)
        parsed = parse_chunk(data, chunk, list(dimension.columns), ",", ["", "NA", "null", "NULL"])
        table, dropped = parsed.rows, parsed.quarantine.num_rows
    keys = list(dimension.keys.values())
    frame = table.to_pandas()
    unique = frame.drop_duplicates(subset=keys, keep="first")
    notes = {
        "path": str(path),
        "rows": len(frame),
        "unparsable_rows": dropped,
        "duplicate_keys": len(frame) - len(unique),
    }
    return pa.Table.from_pandas(unique, preserve_index=False).cast(table.schema), notes


def join_dimensions(spark: SparkSession, layout: Layout, rows: DataFrame) -> tuple[DataFrame, dict[str, Any]]:
    from pyspark.sql import functions as F

    notes = {}
    for dimension in layout.config.dimensions:
        table, notes[dimension.name] = read_dimension(layout, dimension)
        renamed = {
            c.name: dimension.prefix + c.name for c in dimension.columns if c.name not in dimension.keys.values()
        }
        key_alias = {dim_col: f"__key_{src_col}" for src_col, dim_col in dimension.keys.items()}
        frame = spark.createDataFrame(table).select(
            *[F.col(name).alias(key_alias.get(name) or renamed[name]) for name in table.column_names]
        )
        condition = [rows[src] == frame[key_alias[dim]] for src, dim in dimension.keys.items()]
        rows = rows.join(F.broadcast(frame), on=condition, how="left").drop(*key_alias.values())
    return rows, notes


def _quarantine_reasons(root: Path, column: str, days: list[date]) -> dict[str, int]:
    """The most frequent quarantine reasons, with the offending value left out so that alike reasons group."""
    files = [str(f) for folder in existing_partitions(root, column, days) for f in sorted(folder.glob("*.parquet"))]
    if not files:
        return {}
    reasons = pads.dataset(files).to_table(columns=["reason"]).column("reason").to_pylist()
    grouped = Counter(r.split(", got ")[0] if ", got " in r else r for r in reasons)
    return dict(grouped.most_common(20))
