"""Batch scoring benchmark: the `batch_inference` scorer on Spark (its tasks read, derive, encode, score and write the
scored rows' files) against bare derive + encode + `inplace_predict` on the same rows in memory (nothing read or
written), at 1M and 10M rows, in one run.

The rows are the wrangled rows of the flights pipeline under ``--home`` (serve_bench's home, whose `champion`
scores them), repeated to each size and written as Parquet files of ``FILE_ROWS`` rows. Both contenders get the
columns the scorer reads and nothing else. The Spark session is started and warmed before the first size (a
batch_inference task on the stack's Spark Connect server finds it running); the bare booster gets the rows already
in memory (read before its clock starts) and every core. Best of ``--repeats`` per contender. Run with
``make bench``, after serve_bench.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from train_bench import END, PIPELINE, START, timed

FILE_ROWS = 100_000  # per Parquet file: a task each, as the wrangled rows come in a file per day


def repeated_rows(spark: Any, folder: Path, rows: int) -> Path:
    """The pipeline's wrangled rows repeated to ``rows``, as Parquet files in ``folder`` (kept between runs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from flightplan.data.rewrite import read_days
    from flightplan.data.stages import StageInput

    done = folder / "_rows.txt"  # a name the readers skip (Spark and pyarrow leave out files starting with _)
    if done.exists() and int(done.read_text()) == rows:
        return folder
    stage, _, _, layout = StageInput(PIPELINE, START, END).open()
    source = read_days(spark, layout, "wrangled", stage.days).toArrow()
    whole = pa.concat_tables([source] * math.ceil(rows / source.num_rows)).slice(0, rows)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    for number, start in enumerate(range(0, rows, FILE_ROWS)):
        pq.write_table(whole.slice(start, FILE_ROWS), folder / f"part-{number:04d}.parquet")
    done.write_text(str(rows))
    return folder


def measure(spark: Any, scorer: Any, config: Any, folder: Path, repeats: int) -> dict[str, float]:
    """Seconds of the batch_inference scorer on Spark (its files read, scored and written by the tasks) and of the
    bare booster over the rows of ``folder``, best of ``repeats``."""
    import shutil
    import tempfile

    import pyarrow.parquet as pq
    import xgboost as xgb
    from flightplan.deployment.batch import ScoreFiles, columns_read, day_files, file_groups
    from flightplan.features import FeatureMap, derive, encode
    from flightplan.spark import run_each

    columns = columns_read(config, scorer)
    target = Path(tempfile.mkdtemp(prefix="batch-bench-", dir=folder.parent))

    def on_spark() -> None:
        run_each(spark, ScoreFiles(scorer, columns), file_groups(day_files([folder], target)))

    try:
        spark_s = min(timed(on_spark) for _ in range(repeats))
        scored = pq.read_table(target).num_rows
    finally:
        shutil.rmtree(target)
    table = pq.read_table(folder, columns=columns)
    feature_map = FeatureMap.from_json(scorer.feature_map_json)
    booster = xgb.Booster(model_file=bytearray(scorer.booster))
    booster.set_param({"nthread": os.cpu_count() or 1})

    def bare() -> None:
        booster.inplace_predict(encode(derive(table, scorer.derived).to_pandas(), feature_map))

    bare_s = min(timed(bare) for _ in range(repeats))
    return {"rows": table.num_rows, "scored": scored, "spark_s": spark_s, "bare_s": bare_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="serve_bench's home: a flights champion")
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    home = args.home.resolve()
    os.environ["FLIGHTPLAN_HOME"] = str(home)
    from flightplan.data.stages import StageInput
    from flightplan.deployment.batch import champion_scorer
    from flightplan.spark import get_spark

    stage, settings, config, _ = StageInput(PIPELINE, START, END).open()
    scorer = champion_scorer(stage)
    started = time.perf_counter()
    spark = get_spark(settings, "flightplan-batch-bench")
    sizes = [int(size) for size in args.sizes.split(",")]
    warm = repeated_rows(spark, home / "batch" / "warm-up", 10_000)
    measure(spark, scorer, config, warm, 1)
    print(f"{os.cpu_count()} cores; Spark started and warmed in {time.perf_counter() - started:.1f} s", flush=True)
    print("\n| rows | Spark s | Spark rows/s | bare s | bare rows/s | ratio |\n|---:|---:|---:|---:|---:|---:|")
    for rows in sizes:
        figures = measure(
            spark, scorer, config, repeated_rows(spark, home / "batch" / f"rows-{rows}", rows), args.repeats
        )
        if figures["rows"] != rows or figures["scored"] != rows:
            raise SystemExit(f"{rows:,} rows asked, {figures['rows']:,} read and {figures['scored']:,} scored")
        spark_rate, bare_rate = rows / figures["spark_s"], rows / figures["bare_s"]
        print(
            f"| {rows:,} | {figures['spark_s']:.1f} | {spark_rate:,.0f} | {figures['bare_s']:.1f} | {bare_rate:,.0f} "
            f"| {spark_rate / bare_rate:.2f} |",
            flush=True,
        )
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
