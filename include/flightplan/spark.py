"""The one place that builds a Spark session and maps config types onto Spark and Arrow types."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa

from flightplan.config import ColumnType
from flightplan.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DataType, StructType

Item = TypeVar("Item")
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


# The session's SQL settings, which a Spark Connect client may set on its own session too.
SESSION_CONFIGS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionOverwriteMode": "static",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    # A stage reads one folder per day: above this many paths Spark lists them with a job of its own,
    # which costs seconds where the driver lists a local or mounted folder in milliseconds.
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
    "spark.sql.parquet.compression.codec": "snappy",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


def session_configs() -> dict[str, str]:
    return {
        **SESSION_CONFIGS,
        "spark.sql.shuffle.partitions": os.environ.get("FLIGHTPLAN_SPARK_SHUFFLE_PARTITIONS", "8"),
    }


def driver_configs(settings: Settings) -> dict[str, str]:
    """What is fixed when the driver starts: a process's own session sets it, a Connect server takes it on its
    command line."""
    return {
        "spark.master": settings.spark_master,
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.local.dir": str(settings.home / "spark" / "tmp"),
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": os.environ.get("FLIGHTPLAN_SPARK_UI", "false"),
        "spark.driver.extraJavaOptions": "-Dlog4j2.level=WARN",
    }


def worker_environment() -> dict[str, str]:
    """Workers must run the interpreter that has flightplan and pyarrow, even when no venv is activated."""
    return {
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
    }


def run_each(spark: SparkSession, work: Callable[[Item], object], items: list[Item]) -> None:
    """``work`` on every item, one Spark task each, on the executors; through Spark Connect too, which has no
    ``sparkContext`` to parallelize a list with."""
    from pyspark.sql import types as T

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column(0).to_pylist():
                work(items[index])
        return iter(())

    nothing = T.StructType([T.StructField("done", T.BooleanType())])
    spark.range(0, len(items), 1, len(items)).mapInArrow(run, nothing).collect()


def get_spark(settings: Settings, app_name: str = "flightplan", classic: bool = False) -> SparkSession:
    """The session for this process: created once, then shared by every stage that runs in it. With
    ``FLIGHTPLAN_SPARK_REMOTE`` it is a Spark Connect session of that server, unless ``classic`` asks for a Spark
    of this process (what needs the JVM's objects: ``xgboost.spark``)."""
    if settings.spark_connect_url and not classic:
        return _connected(settings, settings.spark_connect_url)
    for name, value in worker_environment().items():
        os.environ.setdefault(name, value)
    from pyspark.sql import SparkSession
    from pyspark.sql.utils import is_remote

    if is_remote():
        raise RuntimeError(
            "this process already holds a Spark Connect session, and Spark cannot start one of its own beside it: "
            "run the stage that needs it in a process of its own (an Airflow task is one)"
        )
    configs = driver_configs(settings)
    Path(configs["spark.local.dir"]).mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.appName(app_name)
    for key, value in {**configs, **session_configs()}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def _connected(settings: Settings, url: str) -> SparkSession:
    from pyspark.sql import SparkSession

    token = connect_token(settings, url)
    if token:  # where the client looks for it; kept out of the URL, which errors and logs print
        os.environ["SPARK_CONNECT_AUTHENTICATE_TOKEN"] = token
    # A task's session, and what it cached, is let go when its process ends rather than at the server's timeout.
    os.environ.setdefault("SPARK_CONNECT_RELEASE_SESSION_ON_EXIT", "true")
    builder = SparkSession.builder.remote(url)
    for key, value in session_configs().items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def connect_token(settings: Settings, url: str) -> str | None:
    """The token of the Spark Connect server at ``url``: ``SPARK_CONNECT_AUTHENTICATE_TOKEN`` (Spark's own
    variable), else, for the embedded stack's server only, the one the stack generated (readable by its owner
    only), which no other server is sent."""
    token = os.environ.get("SPARK_CONNECT_AUTHENTICATE_TOKEN")
    if token or url != settings.spark_server:
        return token or None
    stored = connect_token_file(settings)
    return (stored.read_text().strip() or None) if stored.exists() else None


def connect_token_file(settings: Settings) -> Path:
    return settings.home / "spark" / "connect-token"
