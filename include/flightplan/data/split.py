"""Split: reproducible train / validation / test sets with a manifest a person and a DAG can trust.

Time-based by default (the latest rows are the test set, as production will see them); stratified
random as an option, where a row's side is fixed by a seeded hash of its key, not by partitioning."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flightplan.config import PipelineConfig
from flightplan.data.partitions import exchange
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
    manifest: dict[str, Any] = {}
    for side in SPLITS:
        stats = sides.get(side, {"rows": 0, "from": None, "to": None, "hash_sum": "0"})
        balance = {str(r[config.label.name]): r["count"] for r in classes if r["split"] == side}
        fingerprint = hashlib.sha256(f"{stats['rows']}:{stats['hash_sum']}".encode()).hexdigest()[:16]
        manifest[side] = {
            "rows": stats["rows"],
            "from": stats["from"],
            "to": stats["to"],
            "classes": balance,
            "fingerprint": fingerprint,
        }
    return manifest


def write_splits(
    frame: DataFrame, config: PipelineConfig, root: Path, split_id: str, staging: Path, window: tuple[date, date]
) -> Path:
    """Write the three sides and the manifest under ``root/split_id``, replacing an earlier run whole; ``staging`` is
    an empty folder on the same file system, which this consumes (``partitions.staging_area``)."""
    data = staging / "data"
    frame.write.partitionBy("split").parquet(str(data))
    # Described from what was written: recomputing ``frame`` would read and split the whole window again.
    sides = describe(frame.sparkSession.read.parquet(str(data)), config)
    fingerprint = hashlib.sha256("".join(sides[s]["fingerprint"] for s in SPLITS).encode()).hexdigest()[:16]
    target = root / split_id
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
        paths={s: str(target / "data" / f"split={s}") for s in SPLITS},
        fingerprint=fingerprint,
        config_hash=config.fingerprint(),
    )
    manifest.write(staging / "manifest.json")
    if target.exists():
        exchange(staging, target)  # the earlier split is now in staging, which its owner removes
    else:
        root.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
    LatestSplit(split_id=split_id, manifest=str(target / "manifest.json")).write(root / "latest.json")
    return target / "manifest.json"
