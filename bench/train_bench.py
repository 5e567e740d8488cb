"""Training and inference benchmark on the whole demo year.

The year goes through the real data-engineering stages once (kept between runs), then the model stages
build the features of one run. The contenders, in one process, alternating, best of ``--repeats``:

* the ``train`` task (``stages.train``: reads the run's frames, encodes them, trains, streams per-round
  metrics to MLflow, saves the booster, logs the dataset and artifacts), against
* bare ``xgboost.train`` on the already encoded matrices, with the same parameters, rounds and validation
  set,
* and, for information, the ``train`` task with the ``spark`` engine (xgboost.spark, warm local session).

The tuning step is replaced by a fixed ``best.json`` (same parameters for both), so the figure measures
the task's overhead, not the search. Then the trained model's inference: onnxruntime against xgboost's
``inplace_predict``, one row at a time and in batches. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

PIPELINE = "flights"
START = date(2013, 1, 1)
# The demo year; a smoke run (tests/integration/test_bench_smoke.py) takes its first days only.
END = START + timedelta(days=int(os.environ.get("FLIGHTPLAN_BENCH_DAYS", "365")))
PARAMS = {"max_depth": 6, "learning_rate": 0.1, "min_child_weight": 1.0, "subsample": 0.8, "colsample_bytree": 0.8}


def prepare_split(home: Path) -> None:
    from flightplan.config import load_pipeline
    from flightplan.data import stages as data_stages
    from flightplan.dev.replay import replay
    from flightplan.layout import Layout
    from flightplan.settings import load_settings

    os.environ["FLIGHTPLAN_HOME"] = str(home)
    settings = load_settings()
    layout = Layout(settings, load_pipeline(PIPELINE, settings.pipelines_dir))
    if (layout.splits / "latest.json").exists():
        return
    print(f"preparing the {START:%Y} split under {home} (once)", flush=True)
    replay(layout, START, END)
    job = data_stages.StageInput(PIPELINE, START, END)
    data_stages.run_in_order(job)


def timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_training(rounds: int, repeats: int, with_spark: bool = True) -> tuple[dict[str, Any], Any, str]:
    """Times the train task against bare xgboost.train; returns the figures, the job and its MLflow run id."""
    import xgboost as xgb
    from flightplan.manifests import BestTrial
    from flightplan.model import stages
    from flightplan.model.train import booster_params, matrices
    from flightplan.spark import get_spark
    from flightplan.tracking import RunContext

    # fresh: every repeat trains, not reuses an earlier run's booster (flightplan.model.cache)
    job = stages.ModelJob(PIPELINE, RunContext(dag_id="bench", run_id=f"train-bench-{int(time.time())}"), fresh=True)
    run_id = stages.features(job)
    work = stages.open_run(job, run_id)
    fixed = BestTrial(params=PARAMS, rounds=rounds, metric=work.config.primary_metric, score=None, trial=0)
    fixed.write(work.run_dir / fixed.FILE)
    frames, config = work.frames, work.config
    params = booster_params(frames.feature_map, config.model.tuning.fixed, PARAMS, config.model.tuning.seed)
    train, validation = frames.matrix("train"), frames.matrix("validation")

    def bare() -> None:
        dtrain, dval = matrices(frames.feature_map, train, validation)
        xgb.train(params, dtrain, num_boost_round=rounds, evals=[(dval, "validation")], verbose_eval=False)

    on_spark = replace(job, overrides={"model.engine": "spark"})
    if with_spark:
        get_spark(work.settings, classic=True)
    ours, peer, spark = [], [], []
    for _ in range(repeats):
        peer.append(timed(bare))
        if with_spark:
            spark.append(timed(lambda: stages.train(on_spark, run_id)))
        ours.append(timed(lambda: stages.train(job, run_id)))  # last: the local model is the one kept
    figures = {
        "rows_train": len(train[1]),
        "rows_validation": len(validation[1]),
        "features": len(frames.feature_map.features),
        "rounds": rounds,
        "train_task_s": min(ours),
        "bare_xgboost_s": min(peer),
        "ratio": min(ours) / min(peer),
        "train_task_spark_engine_s": min(spark) if spark else None,
        "spark_ratio": min(spark) / min(peer) if spark else None,
        "all_train_task_s": ours,
        "all_bare_s": peer,
    }
    return figures, job, run_id


def bench_inference(work: Any, single_rows: int) -> dict[str, float]:
    from flightplan.model import package
    from flightplan.model.train import predict
    from flightplan.model.tree_onnx import booster_to_onnx

    booster = work.booster()
    task = work.frames.feature_map.task
    matrix, _ = work.frames.matrix("test")
    onnx_session = package.session(booster_to_onnx(booster, matrix.shape[1]))
    figures: dict[str, float] = {"test_rows": len(matrix)}
    for name, run in (
        ("onnx", lambda rows: package.predict(onnx_session, rows, task)),
        ("xgboost", lambda rows: predict(booster, rows, task)),
    ):
        run(matrix[:10])
        latencies = []
        for i in range(min(single_rows, len(matrix))):
            row = matrix[i : i + 1]
            started = time.perf_counter()
            run(row)
            latencies.append(time.perf_counter() - started)
        figures[f"{name}_1row_p50_us"] = statistics.median(latencies) * 1e6
        figures[f"{name}_1row_p99_us"] = float(np.quantile(latencies, 0.99)) * 1e6
        figures[f"{name}_batch_rows_per_s"] = len(matrix) / min(timed(partial(run, matrix)) for _ in range(3))
    figures["onnx_vs_xgboost_1row_speedup"] = figures["xgboost_1row_p50_us"] / figures["onnx_1row_p50_us"]
    figures["onnx_vs_xgboost_batch_ratio"] = figures["onnx_batch_rows_per_s"] / figures["xgboost_batch_rows_per_s"]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-rows", type=int, default=2000)
    args = parser.parse_args()
    prepare_split(args.home.resolve())
    training, job, run_id = bench_training(args.rounds, args.repeats)
    print(
        f"train task vs bare xgboost.train: {training['rows_train']:,} train + {training['rows_validation']:,} "
        f"validation rows, {training['features']} features, {training['rounds']} rounds: "
        f"{training['train_task_s']:.2f} s vs {training['bare_xgboost_s']:.2f} s = {training['ratio']:.2f}x; "
        f"spark engine (warm session) {training['train_task_spark_engine_s']:.2f} s = {training['spark_ratio']:.2f}x"
    )
    from flightplan.model import stages

    inference = bench_inference(stages.open_run(job, run_id), args.single_rows)
    print(
        f"inference on {inference['test_rows']:,.0f} test rows: 1 row p50 onnx {inference['onnx_1row_p50_us']:.0f} us "
        f"vs xgboost {inference['xgboost_1row_p50_us']:.0f} us ({inference['onnx_vs_xgboost_1row_speedup']:.1f}x); "
        f"batch onnx {inference['onnx_batch_rows_per_s']:,.0f} rows/s vs xgboost "
        f"{inference['xgboost_batch_rows_per_s']:,.0f} rows/s ({inference['onnx_vs_xgboost_batch_ratio']:.2f}x)"
    )
    print(json.dumps({"training": training, "inference": inference}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
