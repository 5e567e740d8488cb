"""Rewrite the day partitions of one stage into the next, with rejected rows kept in quarantine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING

from flightplan.data.partitions import count_rows, existing_partitions, replace_partitions, staging_area
from flightplan.layout import Layout
from flightplan.manifests import PartitionCounts

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

REASON = "quarantine_reason"


def read_days(spark: SparkSession, layout: Layout, stage: str, days: list[date]) -> DataFrame:
    root = layout.dataset(stage)
    folders = existing_partitions(root, layout.config.source.partition_column, days)
    if not folders:
        raise FileNotFoundError(
            f"no {stage} data under {root} for {days[0]}..{days[-1]}: run the stage before it first"
        )
    return spark.read.option("basePath", str(root)).parquet(*map(str, folders))


def rewrite_days(
    spark: SparkSession,
    layout: Layout,
    source: str,
    target: str,
    days: list[date],
    key: str,
    mark: Callable[[DataFrame], DataFrame],
) -> PartitionCounts:
    """``mark`` returns the rows with a ``quarantine_reason`` column, null for rows that go on. The kept
    rows replace the target's partitions, the others replace the target's quarantine partitions."""
    from pyspark.sql import functions as F

    part = layout.config.source.partition_column
    marked = mark(read_days(spark, layout, source, days)).persist()
    with staging_area(layout, target, key) as staging:
        try:
            # One file per day: rows spread over every task (after a shuffle) would write a file per task and day,
            # thousands of small files that every later stage then lists and opens.
            kept = marked.where(F.col(REASON).isNull()).drop(REASON)
            kept.repartition(part).write.partitionBy(part).parquet(str(staging / "rows"))
            rejected = marked.where(F.col(REASON).isNotNull())
            rejected.repartition(part).write.partitionBy(part).parquet(str(staging / "quarantine"))
        finally:
            marked.unpersist()
        replace_partitions(staging / "rows", layout.dataset(target), part, days)
        replace_partitions(staging / "quarantine", layout.quarantine(target), part, days)
        rows = count_rows(layout.dataset(target), part, days)
        quarantined = count_rows(layout.quarantine(target), part, days)
    return PartitionCounts(
        rows=rows,
        quarantined=quarantined,
        rows_total=sum(rows.values()),
        quarantined_total=sum(quarantined.values()),
        output=str(layout.dataset(target)),
        quarantine=str(layout.quarantine(target)),
    )
