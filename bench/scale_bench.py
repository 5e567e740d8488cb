"""Scale benchmark: ingestion and `xgboost.spark` training at 1M, 3M and 10M rows, on local Spark and on a Spark
standalone cluster of two workers started on this machine, with the time and peak memory of each, in one run.

Ingestion reads a drop built by repeating the demo year (as ``ingest_bench.py`` does). Training reads the train
frame of the newest model run under ``--home``, repeated to the size; its validation frame is kept as it is.
Each contender runs in a fresh interpreter, so every figure includes the Spark session's start. Peak memory is
the driver's process tree (with local Spark, that is where the executor threads and Python workers live) plus,
on the cluster, the executors' processes on the workers. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO)]

from ingest_bench import DAY, PIPELINE, build_drop, process_tree_peak_mib, trees_peak_mib  # noqa: E402
from train_bench import PARAMS  # noqa: E402

ROUNDS = 100  # fixed, without early stopping: every size grows the same number of trees
EXECUTOR = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


def executors_peak_mib() -> float:
    """Peak resident memory of the cluster's executor JVMs and their Python workers, summed."""
    return trees_peak_mib(lambda _, cmdline: EXECUTOR in cmdline)


def run_contender(stage: str, frames: Path) -> dict[str, Any]:
    from flightplan.config import load_pipeline
    from flightplan.layout import Layout
    from flightplan.settings import load_settings
    from flightplan.spark import get_spark

    settings = load_settings()
    layout = Layout(settings, load_pipeline(PIPELINE, settings.pipelines_dir))
    started = time.perf_counter()
    spark = get_spark(settings, f"flightplan-scale-{stage}", classic=True)  # xgboost.spark needs a classic session
    figures: dict[str, Any] = {}
    if stage == "ingest":
        from flightplan.data.ingest import ingest

        manifest = json.loads(ingest(layout, DAY, DAY + timedelta(days=1), spark=spark, engine="spark").read_text())
        figures["rows"] = manifest["rows_total"] + manifest["quarantined_total"]
    else:
        from flightplan.features import FeatureMap
        from flightplan.model.spark_train import fit_on_spark
        from flightplan.model.train import booster_params

        feature_map = FeatureMap.load(frames / "feature_map.json")
        tuning = layout.config.model.tuning
        params = booster_params(feature_map, tuning.fixed, PARAMS, tuning.seed)
        booster = fit_on_spark(spark, frames, feature_map, params, ROUNDS, 2, [])
        figures["rows"] = json.loads((frames / "rows.json").read_text())["train"]
        figures["trees"] = booster.num_boosted_rounds()
    figures["seconds"] = time.perf_counter() - started
    figures["driver_peak_mib"] = process_tree_peak_mib()
    figures["executors_peak_mib"] = executors_peak_mib()
    spark.stop()
    return figures


def scaled_frames(source: Path, target: Path, rows: int) -> Path:
    """The source run's train frame repeated to ``rows`` rows, its validation frame and feature map as they are."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (target / "rows.json").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    train = pq.read_table(source / "frames" / "train.parquet")
    repeated = pa.concat_tables([train] * math.ceil(rows / train.num_rows)).slice(0, rows)
    pq.write_table(repeated, target / "train.parquet")
    pq.write_table(pq.read_table(source / "frames" / "validation.parquet"), target / "validation.parquet")
    (target / "feature_map.json").write_text((source / "feature_map.json").read_text())
    (target / "rows.json").write_text(json.dumps({"train": rows}))
    return target


def newest_model_run(home: Path) -> Path:
    runs = sorted(home.glob("data/models/*/*/frames/train.parquet"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit(f"no model run with frames under {home}: run bench/train_bench.py --home {home} first")
    return runs[-1].parents[1]


def contender(stage: str, rows: int, home: Path, frames: Path, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--contender", stage, "--home", str(home), "--frames", str(frames)]
    result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    if figures["rows"] != rows:
        raise SystemExit(f"{stage} at {rows:,} rows saw {figures['rows']:,}")
    return dict(figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a home with a model run (train_bench's)")
    parser.add_argument("--sizes", default="1000000,3000000,10000000")
    parser.add_argument("--contender", choices=["ingest", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        print(json.dumps(run_contender(args.contender, args.frames)))
        return 0

    from tests.support.engines import spark_cluster

    home = args.home.resolve()
    source = newest_model_run(home)
    scale_root = home / "scale"
    sizes = [int(size) for size in args.sizes.split(",")]
    (scale_root / "conf").mkdir(parents=True, exist_ok=True)
    # Executors get most of each worker's memory: the default 1 GB does not hold a 10M-row partition.
    (scale_root / "conf" / "spark-defaults.conf").write_text("spark.executor.memory 5g\n")
    print(f"{os.cpu_count()} cores; training frames from {source}", flush=True)
    results = []
    with spark_cluster(scale_root / "cluster", workers=2, cores=1, memory="6g") as cluster:
        for rows in sizes:
            size_home = scale_root / f"rows-{rows}"
            build_drop(size_home, rows)
            frames = scaled_frames(source, size_home / "train-frames", rows)
            for where, master in (("local Spark", "local[*]"), ("cluster of 2 workers", cluster.master)):
                env = {
                    **os.environ,
                    "FLIGHTPLAN_HOME": str(size_home),
                    "FLIGHTPLAN_SPARK_MASTER": master,
                    "SPARK_CONF_DIR": str(scale_root / "conf"),
                    "PYSPARK_PYTHON": sys.executable,
                }
                for stage in ("ingest", "train"):
                    figures = contender(stage, rows, size_home, frames, env)
                    results.append({"rows": rows, "stage": stage, "where": where, **figures})
                    print(
                        f"{rows:>11,} {stage:<7} {where:<21} {figures['seconds']:>7.1f} s  "
                        f"driver {figures['driver_peak_mib']:>7,.0f} MiB  "
                        f"executors {figures['executors_peak_mib']:>7,.0f} MiB",
                        flush=True,
                    )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
