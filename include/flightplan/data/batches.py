"""Read the date partitions of a stage into pandas for the small-batch steps (profile, validate)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from flightplan.data.partitions import partition_files

NULLABLE = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def read_partitions(root: Path, column: str, days: list[date], columns: list[str] | None = None) -> pa.Table:
    tables = []
    for day in days:
        files = [str(f) for f in partition_files(root, column, [day])]
        if files:
            part = pads.dataset(files).to_table(columns=columns)
            tables.append(part.append_column(column, pa.array([day.isoformat()] * part.num_rows)))
    if not tables:
        raise FileNotFoundError(f"no data under {root} for {days[0]}..{days[-1]}")
    return pa.concat_tables(tables, promote_options="default")


def in_fixed_order(table: pa.Table, time_column: str | None, ignore: tuple[str, ...] = ()) -> pa.Table:
    """The rows sorted by time (when the source has a time column), then by every other column (but
    ``ignore``): the same rows always come in the same order, whatever order their files were written in."""
    lead = [time_column] if time_column else []
    rest = sorted(c for c in table.column_names if c not in (*lead, *ignore))
    return table.sort_by([(name, "ascending") for name in [*lead, *rest]])


def read_in_order(root: Path, column: str, days: list[date], time_column: str | None) -> pa.Table:
    """The days' partitions in a fixed row order (``in_fixed_order``; the partition column aside)."""
    return in_fixed_order(read_partitions(root, column, days), time_column, ignore=(column,))


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """pandas with nullable integers and booleans, so a null never turns an int column into floats."""
    return table.to_pandas(types_mapper=NULLABLE.get)
