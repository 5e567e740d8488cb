"""Split: reproducible train / validation / test sets with a manifest a person and a DAG can trust.

Time-based by default (the latest rows are the test set, as production will see them); stratified
random as an option, where a row's side is fixed by a seeded hash of its key, not by partitioning. On Spark, or in
this process on Arrow (the local engine), which draws the same sides and writes the same manifest."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flightplan.config import PipelineConfig
from flightplan.data.partitions import exchange, partition_files
from flightplan.data.spark_hash import xxhash64
from flightplan.data.wrangle import spark_text_of
from flightplan.files import write_parquet_atomic
from flightplan.manifests import Interval, LatestSplit, SplitManifest, SplitSide

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

SPLITS = ("train", "validation", "test")
HASH_BUCKETS = 1_000_003


def assign_split(frame: DataFrame, config: PipelineConfig) -> DataFrame:
    """``frame`` with a ``split`` column."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spec = config.split
    train_end = spec.fractions.train
    validation_end = train_end + spec.fractions.validation
    if config.source.time_column and spec.strategy == "time":
        moment = F.col(config.source.time_column).cast("double")
        low, high = _time_cuts(frame, config.source.time_column, train_end, validation_end)
        return frame.withColumn("split", _side(moment, low, high))
    order = F.xxhash64(F.lit(spec.seed), *[F.col(k) for k in config.split_key])
    if config.label.task == "regression":
        # A continuous label has no classes to stratify by: each row's side is its hash's place in [0, 1).
        place = F.pmod(order, F.lit(HASH_BUCKETS)) / HASH_BUCKETS
        return frame.withColumn("split", _side(place, train_end, validation_end))
    rank = F.percent_rank().over(Window.partitionBy(config.label.name).orderBy(order))
    return frame.withColumn("split", _side(rank, train_end, validation_end))


def _time_cuts(frame: DataFrame, time_column: str, train_end: float, validation_end: float) -> tuple[float, float]:
    """Exact quantiles of the time column; rows at a cut go to the later side so no moment straddles two sides."""
    from pyspark.sql import functions as F

    seconds = frame.select(F.col(time_column).cast("double").alias("t"))
    low, high = seconds.approxQuantile("t", [train_end, validation_end], 0.0)
    return low, high


def _side(value: Column, low: float, high: float) -> Column:
    from pyspark.sql import functions as F

    return F.when(value < low, "train").when(value < high, "validation").otherwise("test")


def describe(frame: DataFrame, config: PipelineConfig) -> dict[str, Any]:
    """Counts, class balance, time range and an order-independent content fingerprint per side."""
    from pyspark.sql import functions as F

    columns = [c.name for c in config.all_columns] + [config.label.name]
    row_hash = F.xxhash64(*[F.col(c) for c in columns])
    time = F.col(config.source.time_column or config.source.partition_column)
    sides = {
        r["split"]: r.asDict()
        for r in frame.groupBy("split")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.min(time).cast("string").alias("from"),
            F.max(time).cast("string").alias("to"),
            F.sum(row_hash.cast("decimal(38,0)")).cast("string").alias("hash_sum"),
        )
        .collect()
    }
    regression = config.label.task == "regression"
    classes = [] if regression else frame.groupBy("split", config.label.name).count().collect()
    balances = {side: {str(r[config.label.name]): r["count"] for r in classes if r["split"] == side} for side in SPLITS}
    return described(sides, balances)


def described(sides: dict[str, dict[str, Any]], balances: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The manifest's sides from each side's rows, time range and hash sum, and its class balance."""
    manifest: dict[str, Any] = {}
    for side in SPLITS:
        stats = sides.get(side, {"rows": 0, "from": None, "to": None, "hash_sum": "0"})
        fingerprint = hashlib.sha256(f"{stats['rows']}:{stats['hash_sum']}".encode()).hexdigest()[:16]
        manifest[side] = {
            "rows": stats["rows"],
            "from": stats["from"],
            "to": stats["to"],
            "classes": balances.get(side, {}),
            "fingerprint": fingerprint,
        }
    return manifest


@dataclass(frozen=True)
class SplitTarget:
    """Where a split goes (``root/split_id``, staged first in ``staging``: an empty folder on the same file system,
    which the write consumes, ``partitions.staging_area``), the window it covers and the key of its inputs."""

    root: Path
    split_id: str
    staging: Path
    window: tuple[date, date]
    input_key: str | None = None


def write_splits(frame: DataFrame, config: PipelineConfig, target: SplitTarget) -> Path:
    """Write the three sides and the manifest under ``root/split_id``, replacing an earlier run whole."""
    data = target.staging / "data"
    frame.write.partitionBy("split").parquet(str(data))
    # Described from what was written: recomputing ``frame`` would read and split the whole window again.
    sides = describe(frame.sparkSession.read.parquet(str(data)), config)
    return publish_split(sides, config, target)


def publish_split(sides: dict[str, Any], config: PipelineConfig, target: SplitTarget) -> Path:
    """The manifest of the sides staged under ``staging/data`` (with the key of what they were made of), and the
    staged split moved to ``root/split_id``."""
    root, split_id, staging, window = target.root, target.split_id, target.staging, target.window
    fingerprint = hashlib.sha256("".join(sides[s]["fingerprint"] for s in SPLITS).encode()).hexdigest()[:16]
    published = root / split_id
    manifest = SplitManifest(
        pipeline=config.name,
        split_id=split_id,
        strategy=config.split.strategy,
        fractions=config.split.fractions.model_dump(),
        seed=config.split.seed,
        window=Interval(start=window[0], end=window[1]),
        label=config.label.name,
        time_column=config.source.time_column,
        sides={side: SplitSide.model_validate(stats) for side, stats in sides.items()},
        paths={s: str(published / "data" / f"split={s}") for s in SPLITS},
        fingerprint=fingerprint,
        config_hash=config.fingerprint(),
        input_key=target.input_key,
    )
    manifest.write(staging / "manifest.json")
    if published.exists():
        exchange(staging, published)  # the earlier split is now in staging, which its owner removes
    else:
        root.mkdir(parents=True, exist_ok=True)
        staging.rename(published)
    LatestSplit(split_id=split_id, manifest=str(published / "manifest.json")).write(root / "latest.json")
    return published / "manifest.json"


def local_refusal(config: PipelineConfig) -> str | None:
    """Why the local engine cannot split the pipeline's rows as Spark does (None: it can)."""
    time_column = config.source.time_column
    if time_column and config.split.strategy == "time" and config.column(time_column).type != "timestamp":
        return f"a time split on {time_column}, a {config.column(time_column).type} column"
    return None


def write_splits_locally(table: pa.Table, config: PipelineConfig, target: SplitTarget) -> Path:
    """``write_splits`` of an Arrow table (``rewrite.read_days_locally``): each side one file under
    ``split=<side>``, as Spark's partitioned write lays it out (no folder for a side without rows)."""
    sides = local_sides(table, config)
    written: dict[str, pa.Table] = {}
    for side in SPLITS:
        rows = table.filter(pa.array(sides == side))
        if rows.num_rows:
            write_parquet_atomic(rows, target.staging / "data" / f"split={side}" / "part-00000.snappy.parquet")
            written[side] = rows
    return publish_split(describe_locally(written, config), config, target)


def local_sides(table: pa.Table, config: PipelineConfig) -> np.ndarray:
    """``assign_split``'s side of each row of an Arrow table."""
    spec = config.split
    train_end = spec.fractions.train
    validation_end = train_end + spec.fractions.validation
    if config.source.time_column and spec.strategy == "time":
        micros = table.column(config.source.time_column).cast(pa.timestamp("us")).cast(pa.int64())
        moment = pc.fill_null(micros, 0).to_numpy().astype(np.float64) / 1e6
        moment[pc.is_null(micros).to_numpy(zero_copy_only=False)] = np.nan  # a row without a time is tested
        known = np.sort(moment[~np.isnan(moment)])
        return _sides(moment, exact_quantile(known, train_end), exact_quantile(known, validation_end))
    order = xxhash64([spec.seed, *[table.column(key) for key in config.split_key]], table.num_rows)
    if config.label.task == "regression":
        return _sides(np.mod(order, HASH_BUCKETS) / HASH_BUCKETS, train_end, validation_end)
    return _sides(percent_ranks(table.column(config.label.name), order), train_end, validation_end)


def exact_quantile(ordered: np.ndarray, quantile: float) -> Any:
    """Spark's ``approxQuantile`` with a relative error of 0: the value at rank ceil(quantile * n) of the sorted
    values (the first for a quantile of 0 or less, the last for 1 or more)."""
    if not len(ordered):
        raise ValueError("no row has a time to split by")
    rank = 1 if quantile <= 0 else min(math.ceil(quantile * len(ordered)), len(ordered))
    return ordered[rank - 1].item()


def percent_ranks(labels: pa.ChunkedArray, order: np.ndarray) -> np.ndarray:
    """Spark's ``percent_rank()`` over rows partitioned by label and ordered by ``order``: (rank - 1) / (n - 1)
    within the label's rows, tied values sharing the lowest rank; 0 for a label of one row."""
    encoded = pc.dictionary_encode(labels.combine_chunks(), null_encoding="encode")  # nulls a label of their own
    groups = encoded.indices.to_numpy(zero_copy_only=False)
    ranks = np.zeros(len(order), dtype=np.float64)
    for group in range(len(encoded.dictionary)):
        rows = np.flatnonzero(groups == group)
        if len(rows) > 1:
            values = order[rows]
            ranks[rows] = np.searchsorted(np.sort(values), values, side="left") / (len(rows) - 1)
    return ranks


def _sides(value: np.ndarray, low: float, high: float) -> np.ndarray:
    """``_side``: below ``low`` train, below ``high`` validation, the rest (NaN too, as Spark's null) test."""
    return np.where(value < low, "train", np.where(value < high, "validation", "test"))


def hash_sum(rows: pa.Table, config: PipelineConfig) -> int:
    """The sum of each row's xxhash64 over the split's columns, as ``describe`` sums them: the same rows in any
    order give the same sum."""
    columns = [c.name for c in config.all_columns] + [config.label.name]
    return sum(int(each) for each in xxhash64([rows.column(name) for name in columns], rows.num_rows).tolist())


def rows_digest(root: Path, config: PipelineConfig, days: list[date]) -> str:
    """An order-independent hash of the rows of a dataset's days (each day's count and :func:`hash_sum`): the same
    rows give the same digest whichever engine wrote them, in whatever order and files. Read a day at a time."""
    from flightplan.data.batches import read_partitions

    part = config.source.partition_column
    digest = hashlib.sha256()
    for day in days:
        held = "absent"
        if partition_files(root, part, [day]):
            rows = read_partitions(root, part, [day])
            held = f"{rows.num_rows}:{hash_sum(rows, config)}"
        digest.update(f"{day.isoformat()}:{held};".encode())
    return digest.hexdigest()[:16]


def describe_locally(sides: dict[str, pa.Table], config: PipelineConfig) -> dict[str, Any]:
    """``describe`` of the rows of each side, as Arrow tables."""
    time = config.source.time_column or config.source.partition_column
    stats: dict[str, dict[str, Any]] = {}
    balances: dict[str, dict[str, int]] = {}
    for side, rows in sides.items():
        bounds = pc.min_max(rows.column(time))
        stats[side] = {
            "rows": rows.num_rows,
            "from": spark_text_of(bounds["min"]),
            "to": spark_text_of(bounds["max"]),
            "hash_sum": str(hash_sum(rows, config)),
        }
        if config.label.task != "regression":
            counts = pc.value_counts(rows.column(config.label.name)).to_pylist()
            balances[side] = {str(each["values"]): each["counts"] for each in counts}
    return described(stats, balances)
