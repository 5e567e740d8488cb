"""Parse one chunk of a landing file into typed rows and quarantined rows, with pyarrow only.

A chunk is a byte range of a CSV file that starts and ends on a line boundary. Every line of it ends
either as a typed row or as a quarantine record naming the file, the line and the reason; blank lines
are the only lines that end in neither.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from flightplan.config import ColumnSpec
from flightplan.spark import ARROW_TYPES

QUARANTINE_SCHEMA = pa.schema(
    [("source_file", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("raw", pa.string())]
)

Failure = tuple[ColumnSpec, pa.Array, pa.Array]  # the column, which rows failed, and their values as text

INTEGER = r"^\s*[+-]?\d+(\.0*)?\s*$"
FINITE_NUMBER = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
TRUE_WORDS = ["true", "t", "yes", "y", "1"]
FALSE_WORDS = ["false", "f", "no", "n", "0"]
INTEGER_BOUNDS = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class Chunk:
    """A line-aligned byte range of one landing file. ``first_line`` is the file line number of its
    first byte (the header is line 1), or None when it is not known yet (it is then counted on demand)."""

    path: str
    day: str
    start: int
    end: int
    first_line: int | None
    header: tuple[str, ...]
    index: int
    rejected_because: str | None = None


@dataclass(frozen=True)
class ParsedChunk:
    rows: pa.Table
    quarantine: pa.Table
    blank_lines: int


def parse_chunk(
    data: bytes, chunk: Chunk, columns: list[ColumnSpec], delimiter: str, null_values: list[str]
) -> ParsedChunk:
    """Typed rows (``columns`` in order) and quarantine records for the lines in ``data``."""
    clean = _read_clean_chunk(data, chunk, columns, delimiter, null_values)
    if clean is not None:
        return clean
    first_line = chunk.first_line if chunk.first_line is not None else 1
    rejected: list[tuple[int, str, str]] = []
    data = _blank_out_undecodable_lines(data, first_line, rejected)
    blanked = len(rejected)
    strings, lines, malformed = _read_as_text(data, list(chunk.header), delimiter, first_line)
    rejected += malformed
    strings, lines, blank_count = _without_blank_rows(strings, lines)
    rows, failures = _typed(strings, columns, convert, null_values)
    rows, failed_rows = _set_aside(
        rows,
        failures,
        lines,
        lambda bad: pc.binary_join_element_wise(*strings.filter(bad).columns, delimiter).to_pylist(),
    )
    rejected += failed_rows
    return ParsedChunk(rows=rows, quarantine=_quarantine(chunk, rejected), blank_lines=blank_count - blanked)


def _read_as_text(
    data: bytes, header: list[str], delimiter: str, first_line: int
) -> tuple[pa.Table, pa.Array, list[tuple[int, str, str]]]:
    """Every field of ``data`` as text, the line of each row read, and a quarantine record for each line with
    the wrong number of fields (the reader skips those)."""
    malformed: dict[int, tuple[str, str]] = {}

    def on_invalid_row(row: pcsv.InvalidRow) -> str:
        reason = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        malformed[row.number] = (reason, row.text)
        return "skip"

    strings = _read_csv(
        data,
        header,
        pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid_row, ignore_empty_lines=False),
        pcsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    rejected = [(first_line + number - 1, reason, text) for number, (reason, text) in malformed.items()]
    # Row numbers count every record the reader saw, malformed ones included; the kept rows are the others.
    total = strings.num_rows + len(malformed)
    kept_numbers = np.delete(np.arange(first_line, first_line + total, dtype=np.int64), [n - 1 for n in malformed])
    return strings, pa.array(kept_numbers), rejected


def _without_blank_rows(strings: pa.Table, lines: pa.Array) -> tuple[pa.Table, pa.Array, int]:
    """The rows that are not blank lines, with their line numbers, and how many were blank."""
    blank = _all_empty(strings)
    blank_count = pc.sum(blank).as_py() or 0
    if blank_count:
        keep = pc.invert(blank)
        strings, lines = strings.filter(keep), lines.filter(keep)
    return strings, lines, blank_count


def _read_csv(
    data: bytes, header: list[str], parse_options: pcsv.ParseOptions, convert_options: pcsv.ConvertOptions
) -> pa.Table:
    """The lines of ``data`` (no header line among them) as a table with the file's ``header``, in one block."""
    return pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(column_names=header, use_threads=False, block_size=1 << 26),
        parse_options=parse_options,
        convert_options=convert_options,
    )


def parse_parquet(chunk: Chunk, columns: list[ColumnSpec], null_values: list[str]) -> ParsedChunk:
    """Typed rows and quarantine records for the row groups [start, end) of a Parquet file. ``chunk.header``
    holds the config name of each of the file's columns; ``line`` counts records from 1. A value stored with
    another type than the column's converts as the same text would in a CSV file, or is quarantined;
    NaN is a missing value (what pandas writes for one), an infinity is quarantined."""
    table = pq.ParquetFile(chunk.path).read_row_groups(range(chunk.start, chunk.end))
    table = table.rename_columns(list(chunk.header))
    rows, failures = _typed(table, columns, _convert_stored, null_values)
    first = chunk.first_line or 1
    records = pa.array(np.arange(first, first + table.num_rows, dtype=np.int64))
    rows, rejected = _set_aside(
        rows, failures, records, lambda bad: [json.dumps(r, default=str) for r in table.filter(bad).to_pylist()]
    )
    return ParsedChunk(rows=rows, quarantine=_quarantine(chunk, rejected), blank_lines=0)


def _typed(
    source: pa.Table,
    columns: list[ColumnSpec],
    convert_column: Callable[[pa.Array, ColumnSpec, pa.Array], tuple[pa.Array, pa.Array | None]],
    null_values: list[str],
) -> tuple[pa.Table, list[Failure]]:
    """``columns`` of ``source`` converted to their types (all missing for a column the source lacks), and
    where a value did not convert."""
    null_set = pa.array(null_values, pa.string())
    typed: dict[str, pa.Array] = {}
    failures: list[Failure] = []
    for column in columns:
        if column.name not in source.column_names:
            typed[column.name] = pa.nulls(source.num_rows, ARROW_TYPES[column.type])
            continue
        raw = source.column(column.name).combine_chunks()
        values, failed = convert_column(raw, column, null_set)
        typed[column.name] = values
        if failed is not None:
            failures.append((column, failed, pc.cast(raw, pa.string())))
    return pa.table(typed), failures


def _set_aside(
    rows: pa.Table, failures: list[Failure], numbers: pa.Array, shown: Callable[[pa.Array], list[str]]
) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """The rows where every value converted, and a quarantine record (its line or record ``numbers``, the
    reasons, the row as ``shown`` gives the bad ones) for each of the others."""
    if not failures:
        return rows, []
    bad = _any_failed(failures)
    rejected = list(zip(numbers.filter(bad).to_pylist(), _reasons(failures, bad), shown(bad), strict=True))
    return rows.filter(pc.invert(bad)), rejected


def _convert_stored(stored: pa.Array, column: ColumnSpec, null_set: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    target = ARROW_TYPES[column.type]
    if pa.types.is_floating(stored.type):
        stored = pc.if_else(pc.is_nan(stored), pa.scalar(None, stored.type), stored)
    try:
        values = stored if stored.type == target else pc.cast(stored, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return convert(pc.cast(stored, pa.string()), column, null_set)
    if pa.types.is_floating(target):
        infinite = pc.fill_null(pc.is_inf(values), False)
        if pc.any(infinite).as_py():
            return pc.if_else(infinite, pa.scalar(None, target), values), infinite
    return values, None


def _any_failed(failures: list[Failure]) -> pa.Array:
    bad = failures[0][1]
    for _, failed, _ in failures[1:]:
        bad = pc.or_(bad, failed)
    return bad


def _reasons(failures: list[Failure], bad: pa.Array) -> list[str]:
    """For each bad row, every column whose value did not convert, with the value."""
    per_column = [
        (column, failed.filter(bad).to_pylist(), raw.filter(bad).to_pylist()) for column, failed, raw in failures
    ]
    count = len(per_column[0][1])
    return [
        "; ".join(
            f"{column.file_name}: expected {column.type}, got '{values[i]}'"
            for column, flags, values in per_column
            if flags[i]
        )
        for i in range(count)
    ]


def _quarantine(chunk: Chunk, rejected: list[tuple[int, str, str]]) -> pa.Table:
    rejected = sorted(rejected)
    return pa.table(
        {
            "source_file": pa.array([chunk.path] * len(rejected), pa.string()),
            "line": pa.array([r[0] for r in rejected], pa.int64()),
            "reason": pa.array([r[1] for r in rejected], pa.string()),
            "raw": pa.array([r[2] for r in rejected], pa.string()),
        },
        schema=QUARANTINE_SCHEMA,
    )


def _read_clean_chunk(
    data: bytes, chunk: Chunk, columns: list[ColumnSpec], delimiter: str, null_values: list[str]
) -> ParsedChunk | None:
    """The common case in one typed read: every line has the right field count and every value its type.
    Anything else (a malformed line, a bad value, bytes that are not UTF-8, a line of empty fields) returns
    None, and the chunk is parsed the slow way, which says which line failed and why."""
    header = set(chunk.header)
    present = [c for c in columns if c.name in header]
    formats = {c.format for c in present if c.type in ("date", "timestamp")}
    # Read natively: numbers, and timestamps when they share one format; the rest converts like the slow path.
    native = {
        c.name: ARROW_TYPES[c.type]
        for c in present
        if c.type in ("int", "long", "double") or (c.type == "timestamp" and c.format and len(formats) == 1)
    }
    convert_options = pcsv.ConvertOptions(
        include_columns=[c.name for c in present],
        column_types={name: native.get(name, pa.string()) for name in header},
        null_values=null_values,
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        timestamp_parsers=sorted(f for f in formats if f) if len(formats) == 1 else None,
    )
    table = _read_well_formed(data, list(chunk.header), delimiter, convert_options)
    if table is None:
        return None
    typed = _typed_if_all_valid(table, columns, set(native), null_values)
    if typed is None:
        return None
    if present and all(typed[c.name].null_count for c in present) and _any_row_all_null(typed, present):
        return None
    lines = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
    return ParsedChunk(
        rows=pa.table(typed), quarantine=QUARANTINE_SCHEMA.empty_table(), blank_lines=lines - table.num_rows
    )


def _read_well_formed(
    data: bytes, header: list[str], delimiter: str, convert_options: pcsv.ConvertOptions
) -> pa.Table | None:
    """``data`` read with ``convert_options``, or None when a line has the wrong number of fields or a value
    does not read as its type."""
    malformed = False

    def on_invalid_row(row: pcsv.InvalidRow) -> str:
        nonlocal malformed
        malformed = True
        return "skip"

    parse_options = pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid_row)
    try:
        table = _read_csv(data, header, parse_options, convert_options)
    except pa.ArrowInvalid:
        return None
    return None if malformed else table


def _typed_if_all_valid(
    table: pa.Table, columns: list[ColumnSpec], native: set[str], null_values: list[str]
) -> dict[str, pa.Array] | None:
    """``columns`` of a clean read, typed (all missing for a column the file lacks; the ``native`` ones read
    typed already), or None at the first value that is not valid."""
    typed: dict[str, pa.Array] = {}
    null_set = pa.array(null_values, pa.string())
    for column in columns:
        if column.name not in table.column_names:
            typed[column.name] = pa.nulls(table.num_rows, ARROW_TYPES[column.type])
            continue
        values = table.column(column.name).combine_chunks()
        if column.name in native:
            if column.type == "double" and _any_not_finite(values):
                return None
            typed[column.name] = values
            continue
        converted, failed = convert(values, column, null_set)
        if failed is not None:
            return None
        typed[column.name] = converted
    return typed


def _any_row_all_null(typed: dict[str, pa.Array], present: list[ColumnSpec]) -> bool:
    mask = pc.is_null(typed[present[0].name])
    for column in present[1:]:
        mask = pc.and_(mask, pc.is_null(typed[column.name]))
    return bool(pc.any(mask).as_py())


def quarantine_every_line(data: bytes, chunk: Chunk) -> ParsedChunk:
    """A chunk of a file that cannot be read as the source (its header is unusable): every line is kept
    in quarantine with the reason, none is parsed."""
    first_line = chunk.first_line if chunk.first_line is not None else 1
    lines = data.decode("utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    reason = chunk.rejected_because or ""
    kept = [(first_line + i, reason, text) for i, text in enumerate(lines) if text.strip()]
    return ParsedChunk(rows=pa.table({}), quarantine=_quarantine(chunk, kept), blank_lines=len(lines) - len(kept))


def quarantine_whole_file(chunk: Chunk) -> ParsedChunk:
    """A file that cannot be read at all: one quarantine record names it and the reason."""
    record = [(0, chunk.rejected_because or "unreadable", "")]
    return ParsedChunk(rows=pa.table({}), quarantine=_quarantine(chunk, record), blank_lines=0)


def convert(raw: pa.Array, column: ColumnSpec, null_set: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """Cast a string column to the column's type. Returns the values (null where absent or invalid)
    and a boolean mask of values that were present but invalid (None when all were valid)."""
    target = ARROW_TYPES[column.type]
    present = pc.invert(pc.is_in(pc.utf8_trim_whitespace(raw), value_set=null_set))
    text = pc.if_else(present, raw, pa.scalar(None, pa.string()))
    if column.type == "string":
        return text, None
    if column.type in ("int", "long", "double"):
        clean = _cast_if_all_valid(text, target)
        if clean is not None:
            return clean, None
    if column.type in ("int", "long"):
        looks_right = pc.match_substring_regex(text, INTEGER)
        digits = pc.replace_substring_regex(pc.utf8_trim_whitespace(text), r"\.0*$", "")
        wide = pc.cast(pc.if_else(looks_right, digits, pa.scalar(None, pa.string())), pa.int64())
        low, high = INTEGER_BOUNDS[column.type]
        in_range = pc.and_(pc.greater_equal(wide, low), pc.less_equal(wide, high))
        ok = pc.and_kleene(looks_right, in_range)
        values = pc.cast(pc.if_else(ok, wide, pa.scalar(None, pa.int64())), target)
    elif column.type == "double":
        ok = pc.match_substring_regex(text, FINITE_NUMBER)
        values = pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(text), pa.scalar(None, pa.string())), target)
    elif column.type == "boolean":
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(text))
        is_true = pc.is_in(lowered, value_set=pa.array(TRUE_WORDS))
        ok = pc.or_(is_true, pc.is_in(lowered, value_set=pa.array(FALSE_WORDS)))
        values = pc.if_else(ok, is_true, pa.scalar(None, pa.bool_()))
    else:
        default = "%Y-%m-%d" if column.type == "date" else "%Y-%m-%d %H:%M:%S"
        parsed = pc.strptime(
            pc.utf8_trim_whitespace(text), format=column.format or default, unit="us", error_is_null=True
        )
        ok = pc.is_valid(parsed)
        if column.type == "date":
            values = pc.cast(parsed, pa.date32())
        else:
            values = parsed if parsed.type.tz else pc.assume_timezone(parsed, "UTC")
            values = pc.cast(values, target)
    failed = pc.and_(pc.is_valid(text), pc.invert(pc.fill_null(ok, False)))
    return values, failed if pc.any(failed).as_py() else None


def _cast_if_all_valid(text: pa.Array, target: pa.DataType) -> pa.Array | None:
    """The common case, a column with no bad value, in one vectorised cast; None sends it the slow way."""
    try:
        values = pc.cast(text, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if pa.types.is_floating(target) and _any_not_finite(values):
        return None  # nan or inf: the slow path names them
    return values


def _any_not_finite(values: pa.Array) -> bool:
    return bool(pc.any(pc.invert(pc.is_finite(values))).as_py())


def _all_empty(strings: pa.Table) -> pa.Array:
    """Rows whose every field is empty: what the reader makes of a blank line."""
    if strings.num_columns == 0 or strings.num_rows == 0:
        return pa.array([False] * strings.num_rows)
    mask = pc.equal(strings.column(0), "")
    for name in strings.column_names[1:]:
        mask = pc.and_(mask, pc.equal(strings.column(name), ""))
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


def _blank_out_undecodable_lines(data: bytes, first_line: int, rejected: list[tuple[int, str, str]]) -> bytes:
    """Quarantine lines that are not UTF-8 and blank them, so the reader keeps counting lines right."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        pass
    lines = data.split(b"\n")
    for offset, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            reason = f"not valid UTF-8: byte 0x{line[err.start]:02x} at column {err.start + 1}"
            rejected.append((first_line + offset, reason, line.decode("utf-8", errors="replace")))
            lines[offset] = b""
    return b"\n".join(lines)
