"""Wrangle: tidy strings, drop duplicate records (kept in quarantine), impute missing values by rule.

Two engines do the same work: Spark (``wrangle_frame``) and, for a batch small enough, Arrow in this process
(``wrangle_table``), whose rows, quarantine reasons and imputed values are Spark's."""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from flightplan.config import PipelineConfig
from flightplan.data.rewrite import REASON

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def mark_duplicates(frame: DataFrame, config: PipelineConfig) -> DataFrame:
    """Tidy strings and mark every record but the first of each key as a duplicate. "First" is fixed by
    ordering on all columns, so a re-run keeps the same record."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if config.wrangle.trim_strings:
        for column in config.all_columns:
            if column.type == "string":
                trimmed = F.trim(F.col(column.name))
                frame = frame.withColumn(column.name, F.when(trimmed == "", None).otherwise(trimmed))
    key = config.source.key
    if not key:
        return frame.withColumn(REASON, F.lit(None).cast("string"))
    others = [c.name for c in config.all_columns if c.name not in key]
    order = Window.partitionBy(*key).orderBy(*[F.col(c).asc_nulls_last() for c in others])
    described = F.concat_ws(
        ", ", *[F.concat(F.lit(f"{k}="), F.coalesce(F.col(k).cast("string"), F.lit("null"))) for k in key]
    )
    rank = F.row_number().over(order)
    return frame.withColumn(
        REASON, F.when(rank > 1, F.concat(F.lit("duplicate of the record with "), described)).otherwise(None)
    )


def imputation_values(frame: DataFrame, config: PipelineConfig) -> dict[str, Any]:
    """The value each imputation rule fills in, computed on the kept rows of this batch for median and mode."""
    from pyspark.sql import functions as F

    values: dict[str, Any] = {}
    for name, rule in config.wrangle.impute.items():
        if rule.strategy == "constant":
            values[name] = rule.value
        elif rule.strategy == "median":
            values[name] = frame.agg(F.percentile_approx(name, 0.5, 10000)).collect()[0][0]
        else:
            top = (
                frame.where(F.col(name).isNotNull()).groupBy(name).count().orderBy(F.desc("count"), F.asc(name)).first()
            )
            values[name] = top[0] if top else None
    return values


def impute(frame: DataFrame, values: dict[str, Any]) -> DataFrame:
    from pyspark.sql import functions as F

    for name, value in values.items():
        if value is not None:
            kind = frame.schema[name].dataType
            frame = frame.withColumn(name, F.coalesce(F.col(name), F.lit(value).cast(kind)))
    return frame


def wrangle_frame(frame: DataFrame, config: PipelineConfig) -> tuple[DataFrame, dict[str, Any]]:
    """Marked rows (see rewrite_days) with missing values imputed, and the values used."""
    from pyspark.sql import functions as F

    marked = mark_duplicates(frame, config)
    values = imputation_values(marked.where(F.col(REASON).isNull()), config)
    return impute(marked, values), values


# The key types whose text the local engine writes as Spark's CAST(... AS STRING) does (a double's differs).
LOCAL_KEY_TYPES = ("string", "int", "long", "boolean", "date", "timestamp")
# The types the local engine takes a median or a mode of.
LOCAL_IMPUTED_TYPES = ("string", "int", "long", "double", "boolean", "date")


def local_refusal(config: PipelineConfig) -> str | None:
    """Why the local engine cannot wrangle the pipeline's rows as Spark does (None: it can)."""
    types = {column.name: column.type for column in config.all_columns}
    keys = [name for name in config.source.key if types[name] not in LOCAL_KEY_TYPES]
    if keys:
        return f"key column(s) {keys} of a type whose text Spark writes its own way"
    imputed = [n for n, rule in config.wrangle.impute.items() if rule.strategy != "constant"]
    odd = [name for name in imputed if types[name] not in LOCAL_IMPUTED_TYPES]
    return f"a median or mode of {odd}" if odd else None


def wrangle_table(table: pa.Table, config: PipelineConfig) -> tuple[pa.Table, dict[str, Any]]:
    """``wrangle_frame`` on an Arrow table: the rows in key order, marked, with missing values imputed."""
    marked = mark_duplicate_rows(table, config)
    values = imputed_values(marked.filter(pc.is_null(marked[REASON])), config)
    for name, value in values.items():
        if value is not None:  # the column has no nulls left: Spark's schema says so too (its files' "required")
            place = marked.schema.get_field_index(name)
            column = marked.column(place)
            field = marked.schema.field(place).with_nullable(False)
            marked = marked.set_column(place, field, pc.fill_null(column, pa.scalar(value).cast(column.type)))
    return marked, values


def mark_duplicate_rows(table: pa.Table, config: PipelineConfig) -> pa.Table:
    """``mark_duplicates`` on an Arrow table: strings trimmed of spaces (empty ones made null), then, in each key,
    every row but the first in the order of the other columns (ascending, nulls last) marked as a duplicate."""
    if config.wrangle.trim_strings:
        for column in config.all_columns:
            if column.type == "string":
                place = table.schema.get_field_index(column.name)
                trimmed = pc.utf8_trim(table.column(place), characters=" ")
                table = table.set_column(place, column.name, pc.if_else(pc.equal(trimmed, ""), None, trimmed))
    key = config.source.key
    if not key:
        return table.append_column(REASON, pa.nulls(table.num_rows, pa.string()))
    others = [c.name for c in config.all_columns if c.name not in key]
    order = [(name, "ascending", "at_end") for name in [*key, *others]]
    table = table.take(pc.sort_indices(table, sort_keys=order))
    repeated = same_key_as_the_row_before(table, key).to_pylist()
    keys = table.select(key).to_pylist()
    reasons = [
        "duplicate of the record with " + ", ".join(f"{k}={spark_text(value)}" for k, value in keys[row].items())
        if repeated[row]
        else None
        for row in range(table.num_rows)
    ]
    return table.append_column(REASON, pa.array(reasons, pa.string()))


def same_key_as_the_row_before(table: pa.Table, key: list[str]) -> pa.Array:
    """Whether each row's key equals the one before it, two nulls being equal (as Spark's window groups them)."""
    rows = table.num_rows
    if not rows:
        return pa.array([], pa.bool_())
    same = pa.array([True] * (rows - 1))
    for name in key:
        column = table.column(name).combine_chunks()
        before, current = column.slice(0, rows - 1), column.slice(1)
        both_null = pc.and_(pc.is_null(before), pc.is_null(current))
        same = pc.and_(same, pc.or_(pc.fill_null(pc.equal(before, current), False), both_null))
    return pa.concat_arrays([pa.array([False]), same])


def spark_text(value: Any) -> str:
    """A key value as Spark's CAST(... AS STRING) writes it (the session's time zone is UTC); "null" for none."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        fraction = f".{value.microsecond:06d}".rstrip("0") if value.microsecond else ""
        return value.strftime("%Y-%m-%d %H:%M:%S") + fraction
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def spark_text_of(value: pa.Scalar) -> str | None:
    """An aggregate's value as ``spark_text`` writes it; None where it has none (no values to aggregate)."""
    found = value.as_py()
    return None if found is None else spark_text(found)


def imputed_values(kept: pa.Table, config: PipelineConfig) -> dict[str, Any]:
    """``imputation_values`` on an Arrow table: the median is the lower middle value (the value at rank
    ceil(n / 2) of the n known), as Spark's ``percentile_approx`` gives for the batches this engine takes."""
    values: dict[str, Any] = {}
    for name, rule in config.wrangle.impute.items():
        known = pc.drop_null(kept.column(name))
        if rule.strategy == "constant":
            values[name] = rule.value
        elif len(known) == 0:
            values[name] = None
        elif rule.strategy == "median":
            ordered = pc.sort_indices(known)
            values[name] = known[ordered[math.ceil(len(known) / 2) - 1].as_py()].as_py()
        else:
            counts = pc.value_counts(known).to_pylist()
            most = max(count["counts"] for count in counts)
            values[name] = min(count["values"] for count in counts if count["counts"] == most)
    return values
