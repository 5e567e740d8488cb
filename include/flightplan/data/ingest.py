"""Ingest: the landing files of an interval become typed, joined Parquet partitioned by day.

The files are cut into line-aligned chunks of about 64 MiB, and each chunk is one task that does all of its
work in Arrow: parse with pyarrow's C++ CSV reader, quarantine what does not parse (file, line, reason),
left-join the dimension tables (small, shipped with the task), and write its own Parquet file under the
day's partition. Spark schedules the tasks over its executors (engine ``spark``), or a thread pool runs them
in this process (engine ``local``): no row ever crosses between Python and the JVM, which is what made plain
Spark three times slower than pyarrow here. A task's files are named after its chunk, so a retried task
overwrites its output instead of duplicating it, and each day's partition is swapped in whole at the end.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from flightplan.config import ColumnSpec, DimensionSpec, SourceSpec
from flightplan.data.parse import Chunk, parse_chunk, parse_parquet, quarantine_every_line, quarantine_whole_file
from flightplan.data.partitions import (
    count_rows,
    days_in,
    interval_key,
    partition_files,
    replace_partitions,
    staging_area,
    visible_files,
)
from flightplan.files import write_parquet_atomic
from flightplan.layout import Layout
from flightplan.manifests import IngestManifest, Interval
from flightplan.spark import ARROW_TYPES, get_spark, run_each

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

CHUNK_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 20  # ten thousand columns of long names fit in a fifth of it
STAGE = "curated"
ENGINES = ("spark", "local")
log = logging.getLogger(__name__)


class NoLandingData(FileNotFoundError):
    """The interval has no landing files at all: the feed did not arrive."""


def ingest(
    layout: Layout, start: date, end: date, spark: SparkSession | None = None, engine: str | None = None
) -> Path:
    """Ingest the days of [start, end) (for a snapshot, its own day: ``PipelineConfig.interval`` resolves it,
    as ``data_stages.StageInput.open`` does); returns the path of the ingest manifest."""
    config = layout.config
    engine = engine or layout.settings.ingest_engine
    if engine not in ENGINES:
        raise ValueError(f"ingest engine '{engine}' is not one of {ENGINES}")
    days = days_in(start, end)
    plan = plan_chunks(layout, days)
    without_landing = [date.fromisoformat(day) for day in plan["missing_days"]]
    # A day whose files are gone keeps what it held: re-running a range never deletes data by absence.
    part = config.source.partition_column
    kept = [day for day in without_landing if partition_files(layout.dataset(STAGE), part, [day])]
    if not plan["chunks"] and not plan["files"] and not kept:
        where = (
            f"the snapshot {layout.snapshot} has no data files"
            if layout.snapshot
            else f"no landing files for {start}..{end} under {layout.landing} (one YYYY-MM-DD folder per day)"
        )
        raise NoLandingData(where)
    if kept:
        log.warning("no landing files for %s: their %s rows are kept as they were", ", ".join(map(str, kept)), STAGE)
    key = interval_key(start, end)
    dimensions = {d.name: load_dimension(layout, d) for d in config.dimensions}
    with staging_area(layout, STAGE, key) as staging:
        task = _chunk_task(layout, [prepared for prepared, _ in dimensions.values()], staging)
        _run_tasks(task, plan["chunks"], engine, spark, layout)
        published = _publish(layout, staging, [day for day in days if day not in without_landing], days)
    manifest = IngestManifest(
        pipeline=config.name,
        engine=engine,
        interval=Interval(start=start, end=end),
        days_without_landing=without_landing,
        days_kept=kept,
        files=plan["files"],
        **published,
        dimensions={name: notes for name, (_, notes) in dimensions.items()},
        output=str(layout.dataset(STAGE)),
        quarantine=str(layout.quarantine("ingest")),
    )
    return manifest.write(layout.manifest("ingest", key))


def _chunk_task(layout: Layout, dimensions: list[PreparedDimension], staging: Path) -> ChunkTask:
    config = layout.config
    return ChunkTask(
        format=config.source.format,
        columns=list(config.source.columns),
        output=[c.name for c in config.all_columns],
        delimiter=config.source.delimiter,
        null_values=list(config.source.null_values),
        dimensions=dimensions,
        partition_column=config.source.partition_column,
        rows_dir=str(staging / "rows"),
        quarantine_dir=str(staging / "quarantine"),
    )


def _run_tasks(task: ChunkTask, chunks: list[Chunk], engine: str, spark: SparkSession | None, layout: Layout) -> None:
    """``task`` on every chunk: on Spark's executors, or on a pool of threads, one per core, in this process."""
    if chunks and engine == "spark":
        run_each(spark or get_spark(layout.settings), task, chunks)
    elif chunks:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(task, chunks))


def _publish(layout: Layout, staging: Path, landed: list[date], days: list[date]) -> dict[str, Any]:
    """Swap the staged days that landed into the dataset and the quarantine, and count what each day of the
    interval now holds (with the most frequent quarantine reasons)."""
    part = layout.config.source.partition_column
    replace_partitions(staging / "rows", layout.dataset(STAGE), part, landed)
    replace_partitions(staging / "quarantine", layout.quarantine("ingest"), part, landed)
    rows = count_rows(layout.dataset(STAGE), part, days)
    quarantined = count_rows(layout.quarantine("ingest"), part, days)
    return {
        "rows": rows,
        "quarantined": quarantined,
        "rows_total": sum(rows.values()),
        "quarantined_total": sum(quarantined.values()),
        "quarantine_reasons": _quarantine_reasons(layout.quarantine("ingest"), part, days),
    }


def plan_chunks(layout: Layout, days: list[date]) -> dict[str, Any]:
    """List the data files of the days (or the snapshot's), read their headers, and cut them into chunks:
    line-aligned byte ranges of a CSV file, row groups of a Parquet file."""
    chunks: list[Chunk] = []
    files: list[dict[str, Any]] = []
    missing_days = []
    for day, paths in data_files(layout, days):
        if not paths:
            missing_days.append(day.isoformat())
            continue
        for path in paths:
            note, file_chunks = plan_file(layout.config.source, path, day, len(chunks))
            files.append(note)
            chunks += file_chunks
    return {"chunks": chunks, "files": files, "missing_days": missing_days}


def plan_file(source: SourceSpec, path: Path, day: date, first_index: int) -> tuple[dict[str, Any], list[Chunk]]:
    """A data file's note for the manifest (its size, how its columns differ from the config's, its problem)
    and its chunks, numbered from ``first_index``. A file whose header cannot be read is one rejected chunk;
    the chunks of a file whose header is not the source's are rejected with the reason."""
    note: dict[str, Any] = {"path": str(path), "day": day.isoformat(), "bytes": path.stat().st_size}
    try:
        header, ranges = parquet_ranges(path) if source.format == "parquet" else csv_ranges(path, source.delimiter)
    except ValueError as err:
        note["problem"] = str(err)
        return note, [Chunk(str(path), day.isoformat(), 0, 0, 1, (), first_index, str(err))]
    if header is None:
        note["problem"] = "empty file"
        return note, []
    header = [source.file_names.get(name, name) for name in header]
    rejected = header_problem(source, header)
    note.update(column_differences(source, header))
    if rejected:
        note["problem"] = rejected
    elif not ranges:
        note["problem"] = "no data lines after the header"
    chunks = [
        Chunk(str(path), day.isoformat(), start, end, first_line, tuple(header), first_index + offset, rejected)
        for offset, (start, end, first_line) in enumerate(ranges)
    ]
    return note, chunks


def header_problem(source: SourceSpec, header: list[str]) -> str | None:
    """Why a file with this header (config names) cannot be read as the source, or None when it can."""
    repeated = sorted(n for n, k in Counter(header).items() if k > 1)
    if repeated:
        return f"header repeats column(s) {repeated}"
    if not set(header) & {c.name for c in source.columns}:
        if source.format == "csv":
            return f"header has none of the expected columns (is the delimiter '{source.delimiter}'?)"
        return "schema has none of the expected columns"
    return None


def column_differences(source: SourceSpec, header: list[str]) -> dict[str, list[str]]:
    """The configured columns a header lacks (by their file names) and the columns it has beyond them, each
    only when there are some."""
    expected = [c.name for c in source.columns]
    differences = {
        "missing_columns": [c.file_name for c in source.columns if c.name not in header],
        "unexpected_columns": [n for n in header if n not in expected],
    }
    return {what: names for what, names in differences.items() if names}


def data_files(layout: Layout, days: list[date]) -> list[tuple[date, list[Path] | None]]:
    """The data files of each day: its landing folder's (None when there is no folder), or for a snapshot
    source the snapshot's files, under its day."""
    snapshot = layout.snapshot
    if snapshot is not None:
        if snapshot.is_file():
            return [(days[0], [snapshot])]
        return [(days[0], visible_files(snapshot) if snapshot.is_dir() else [])]
    folders = [(day, layout.landing / day.isoformat()) for day in days]
    return [(day, visible_files(folder) if folder.is_dir() else None) for day, folder in folders]


def csv_ranges(path: Path, delimiter: str) -> tuple[list[str] | None, list[tuple[int, int, int | None]]]:
    """The header of a CSV file and its body cut into line-aligned byte ranges (with the first one's line)."""
    header, body_start = read_header(path, delimiter)
    ranges = line_aligned_ranges(path, body_start, CHUNK_BYTES)
    return header, [(start, end, 2 if start == body_start else None) for start, end in ranges]


def parquet_ranges(path: Path) -> tuple[list[str] | None, list[tuple[int, int, int | None]]]:
    """The column names of a Parquet file and one range per row group, with the group's first record number."""
    try:
        metadata = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"not a readable Parquet file: {err}") from None
    if metadata.num_rows == 0:
        return None, []
    ranges: list[tuple[int, int, int | None]] = []
    first = 1
    for group in range(metadata.num_row_groups):
        ranges.append((group, group + 1, first))
        first += metadata.row_group(group).num_rows
    return metadata.schema.to_arrow_schema().names, ranges


def read_header(path: Path, delimiter: str) -> tuple[list[str] | None, int]:
    """The column names of a CSV file (None when the file is empty) and the byte offset where its first data
    line starts. Raises ValueError, with the reason, when the first line cannot be a header: too long, blank,
    not UTF-8 text (a binary file, or another encoding)."""
    with path.open("rb") as handle:
        first = handle.readline(MAX_HEADER_BYTES + 1)  # bounded: a file with no newline is not read whole
    if len(first) > MAX_HEADER_BYTES:
        raise ValueError(f"not a CSV file: its first line is longer than {MAX_HEADER_BYTES:,} bytes")
    if not first.strip():
        if path.stat().st_size == len(first):
            return None, len(first)
        raise ValueError("the first line, where the header belongs, is blank")
    try:
        text = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"not a UTF-8 CSV file: byte 0x{first[err.start]:02x} at column {err.start + 1} of its first line"
        ) from None
    if "\x00" in text:
        raise ValueError("not a CSV file: its first line holds NUL bytes")
    try:
        names = next(csv.reader([text], delimiter=delimiter))
    except csv.Error as err:
        raise ValueError(f"the first line is not a CSV header: {err}") from None
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


@dataclass(frozen=True)
class PreparedDimension:
    """A dimension table ready to join: keys under the source's names and types, other columns prefixed."""

    name: str
    keys: list[str]
    table: pa.Table


@dataclass(frozen=True)
class ChunkTask:
    """One chunk, start to finish, in Arrow; picklable, so Spark can ship it to its executors."""

    format: str
    columns: list[ColumnSpec]
    output: list[str]
    delimiter: str
    null_values: list[str]
    dimensions: list[PreparedDimension]
    partition_column: str
    rows_dir: str
    quarantine_dir: str

    def __call__(self, chunk: Chunk) -> None:
        # A file without a header (not readable as the source at all) is one record, as is a Parquet file's
        # rejected row group: neither has lines to quarantine one by one.
        if chunk.rejected_because and (self.format == "parquet" or not chunk.header):
            parsed = quarantine_whole_file(chunk)
        elif self.format == "parquet":
            parsed = parse_parquet(chunk, self.columns, self.null_values)
        else:
            with open(chunk.path, "rb") as handle:
                handle.seek(chunk.start)
                data = handle.read(chunk.end - chunk.start)
            if chunk.rejected_because:
                parsed = quarantine_every_line(data, chunk)
            else:
                parsed = parse_chunk(data, chunk, self.columns, self.delimiter, self.null_values)
        quarantine = parsed.quarantine
        if quarantine.num_rows:
            if chunk.first_line is None:
                shift = count_newlines_before(chunk.path, chunk.start)
                quarantine = quarantine.set_column(1, "line", pc.add(quarantine.column("line"), shift))
            write_parquet_atomic(quarantine, self._target(self.quarantine_dir, chunk))
        rows = parsed.rows
        if rows.num_rows:
            for dimension in self.dimensions:
                rows = rows.join(dimension.table, keys=dimension.keys, join_type="left outer", use_threads=False)
            write_parquet_atomic(rows.select(self.output), self._target(self.rows_dir, chunk))

    def _target(self, root: str, chunk: Chunk) -> Path:
        return Path(root) / f"{self.partition_column}={chunk.day}" / f"chunk-{chunk.index:06d}.parquet"


def load_dimension(layout: Layout, dimension: DimensionSpec) -> tuple[PreparedDimension, dict[str, Any]]:
    """A dimension table ready to join, and notes on what was read (rows, unparsable rows, duplicate keys)."""
    table, notes = read_dimension(layout, dimension)
    return prepare_dimension(dimension, table, layout.config.source.columns), notes


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
        header, body_start = read_header(path, dimension.delimiter)
        if header is None:
            raise ValueError(f"dimension '{dimension.name}': {path} is empty")
        data = path.read_bytes()[body_start:]
        chunk = Chunk(str(path), "", body_start, body_start + len(data), 2, tuple(header), 0)
        parsed = parse_chunk(data, chunk, list(dimension.columns), dimension.delimiter, list(dimension.null_values))
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


def prepare_dimension(dimension: DimensionSpec, table: pa.Table, source: list[ColumnSpec]) -> PreparedDimension:
    source_types = {c.name: ARROW_TYPES[c.type] for c in source}
    by_dimension_column = {dim_col: src_col for src_col, dim_col in dimension.keys.items()}
    columns, names = [], []
    for column in dimension.columns:
        values = table.column(column.name)
        if column.name in by_dimension_column:
            name = by_dimension_column[column.name]
            try:
                values = values.cast(source_types[name])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ValueError(
                    f"dimension '{dimension.name}': key column '{column.name}' ({column.type}) cannot be compared "
                    f"with source column '{name}' ({source_types[name]}): {err}"
                ) from err
        else:
            name = dimension.prefix + column.name
        columns.append(values)
        names.append(name)
    return PreparedDimension(dimension.name, list(dimension.keys), pa.table(columns, names=names))


def _quarantine_reasons(root: Path, column: str, days: list[date]) -> dict[str, int]:
    """The most frequent quarantine reasons, with the offending value left out so that alike reasons group."""
    files = [str(f) for f in partition_files(root, column, days)]
    if not files:
        return {}
    reasons = pads.dataset(files).to_table(columns=["reason"]).column("reason").to_pylist()
    grouped = Counter(r.split(", got ")[0] if ", got " in r else r for r in reasons)
    return dict(grouped.most_common(20))
