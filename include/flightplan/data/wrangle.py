"""Wrangle: tidy strings, drop duplicate records (kept in quarantine), impute missing values by rule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
