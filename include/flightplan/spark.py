"""The one place that builds a Spark session and maps config types onto Spark and Arrow types."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pyarrow as pa

from flightplan.config import ColumnType
from flightplan.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DataType, StructType

ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int32(),
    "long": pa.int64(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    # Timestamps are instants kept in UTC everywhere (the Spark session time zone is UTC too),
    # so a value never shifts between the parser, Spark, Parquet and pandas.
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def spark_type(column_type: ColumnType) -> DataType:
    from pyspark.sql import types as T

    return {
        "string": T.StringType(),
        "int": T.IntegerType(),
        "long": T.LongType(),
        "double": T.DoubleType(),
        "boolean": T.BooleanType(),
        "date": T.DateType(),
        "timestamp": T.TimestampType(),
    }[column_type]


def spark_schema(fields: list[tuple[str, ColumnType]]) -> StructType:
    from pyspark.sql import types as T

    return T.StructType([T.StructField(name, spark_type(kind), True) for name, kind in fields])


def get_spark(settings: Settings, app_name: str = "flightplan") -> SparkSession:
    """The session for this process: created once, then shared by every stage that runs in it."""
    # Workers must run the interpreter that has flightplan and pyarrow, even when no venv is activated.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    local_dir = settings.home / "spark" / "tmp"
    local_dir.mkdir(parents=True, exist_ok=True)
    session = (
        SparkSession.builder.master(settings.spark_master)
        .appName(app_name)
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.local.dir", str(local_dir))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", os.environ.get("FLIGHTPLAN_SPARK_SHUFFLE_PARTITIONS", "8"))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.sources.partitionOverwriteMode", "static")
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        # A stage reads one folder per day: above this many paths Spark lists them with a job of its own,
        # which costs seconds where the driver lists a local or mounted folder in milliseconds.
        .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "100000")
        .config("spark.sql.parquet.compression.codec", "snappy")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", os.environ.get("FLIGHTPLAN_SPARK_UI", "false"))
        .config("spark.driver.extraJavaOptions", "-Dlog4j2.level=WARN")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("WARN")
    return session
