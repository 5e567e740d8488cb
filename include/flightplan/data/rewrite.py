"""Rewrite the day partitions of one stage into the next, with rejected rows kept in quarantine: on Spark, or, for
a batch small enough, in this process with Arrow (the same partitions, one file per day either way)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from flightplan.data.partitions import (
    count_rows,
    existing_partitions,
    replace_partitions,
    staging_area,
)
from flightplan.files import write_parquet_atomic
from flightplan.layout import Layout
from flightplan.manifests import PartitionCounts

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

REASON = "quarantine_reason"
SPARK, LOCAL = "spark", "local"  # the engines a rewrite runs on
log = logging.getLogger(__name__)


def stage_folders(layout: Layout, stage: str, days: list[date]) -> list[Path]:
    """The stage's day folders of ``days`` that exist; none is an error that says which stage to run."""
    root = layout.dataset(stage)
    folders = existing_partitions(root, layout.config.source.partition_column, days)
    if not folders:
        raise FileNotFoundError(
            f"no {stage} data under {root} for {days[0]}..{days[-1]}: run the stage before it first"
        )
    return folders


def read_days(spark: SparkSession, layout: Layout, stage: str, days: list[date]) -> DataFrame:
    folders = stage_folders(layout, stage, days)
    return spark.read.option("basePath", str(layout.dataset(stage))).parquet(*map(str, folders))


def engine_for(layout: Layout, stage: str, days: list[date], refusal: Callable[[], str | None]) -> str:
    """``LOCAL`` when the stage's rows of ``days`` number at most the settings' ``local_engine_rows`` and the local
    engine does the work as Spark does (``refusal`` says why not; asked only then, as it may read every label sent
    back), ``SPARK`` otherwise."""
    limit = layout.settings.local_engine_rows
    if not limit:
        return SPARK
    rows = sum(count_rows(layout.dataset(stage), layout.config.source.partition_column, days).values())
    if rows > limit:
        return SPARK
    if (reason := refusal()) is not None:
        log.info("%d %s rows, on Spark rather than in this process: %s", rows, stage, reason)
        return SPARK
    return LOCAL


def read_days_locally(layout: Layout, stage: str, days: list[date]) -> pa.Table:
    """``read_days`` into Arrow as Spark reads the files: every column nullable (a file's "required" is not kept),
    the day a string column from the partition folder's name."""
    from flightplan.data.batches import read_partitions

    stage_folders(layout, stage, days)
    table = read_partitions(layout.dataset(stage), layout.config.source.partition_column, days)
    return table.cast(pa.schema([field.with_nullable(True) for field in table.schema]))


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
        return published(layout, staging, target, days, SPARK)


def rewrite_days_locally(
    layout: Layout, source: str, target: str, days: list[date], key: str, mark: Callable[[pa.Table], pa.Table]
) -> PartitionCounts:
    """``rewrite_days`` in this process, ``mark`` taking and returning an Arrow table."""
    part = layout.config.source.partition_column
    marked = mark(read_days_locally(layout, source, days))
    with staging_area(layout, target, key) as staging:
        reasons = marked.column(REASON)
        write_days(marked.filter(pc.is_null(reasons)).drop_columns([REASON]), staging / "rows", part)
        write_days(marked.filter(pc.is_valid(reasons)), staging / "quarantine", part)
        return published(layout, staging, target, days, LOCAL)


def write_days(table: pa.Table, folder: Path, part: str) -> None:
    """The rows as one file per day under ``folder/<part>=<day>``, the day in the folder's name only, as Spark's
    partitioned write lays them out (no folder for a day without rows)."""
    for day in pc.unique(table.column(part)).to_pylist():
        rows = table.filter(pc.equal(table.column(part), day)).drop_columns([part])
        write_parquet_atomic(rows, folder / f"{part}={day}" / "part-00000.snappy.parquet")


def published(layout: Layout, staging: Path, target: str, days: list[date], engine: str) -> PartitionCounts:
    """The staged rows and quarantine made the target's days; their counts, and the engine that wrote them."""
    part = layout.config.source.partition_column
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
        engine=engine,
    )
