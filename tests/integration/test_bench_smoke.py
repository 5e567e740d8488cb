"""Each benchmark of `make bench` at smoke size, so that none rots: a fortnight of the demo instead of its year, a
second of load per cell, thousands of rows instead of millions. Each must run to its end and print its comparison;
the figures themselves come from full runs (docs/performance.md), never from here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pipeline import REPO
from tests.support.processes import MARK

SMOKE_DAYS = "14"


def run_bench(script: str, *args: str, timeout: float = 900) -> str:
    """``bench/<script>`` with ``args`` in an environment of its own (no home, store or Airflow of this session);
    returns what it printed."""
    own = {key: value for key, value in os.environ.items() if not key.startswith(("FLIGHTPLAN_", "MLFLOW_", "AIRFLOW"))}
    env = {**own, "FLIGHTPLAN_BENCH_DAYS": SMOKE_DAYS, MARK: os.environ[MARK]}
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{script}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The home the training benchmark prepares (the fortnight's split and a model run); the serving, monitoring
    and scale benchmarks work on it, as `make bench` chains them."""
    home = tmp_path_factory.mktemp("bench") / "train"
    printed = run_bench("train_bench.py", "--home", str(home), "--rounds", "5", "--repeats", "1", "--single-rows", "50")
    assert "train task vs bare xgboost.train" in printed and "inference on" in printed, printed[-2000:]
    return home


def test_the_ingestion_benchmark_runs(tmp_path: Path) -> None:
    printed = run_bench("ingest_bench.py", "--home", str(tmp_path), "--rows", "20000")
    assert "flightplan ingest, spark engine, first run" in printed and "pyarrow" in printed, printed[-2000:]


def test_the_pipeline_benchmark_runs(tmp_path: Path) -> None:
    """Each engine's stack starts, runs both pipelines' data_engineering through Airflow (Connect's also the wide
    table's data_engineering and the model_engineering its splits start, then a second one that the cache
    serves), and stops."""
    wide = ("--wide-rows", "2000", "--categories", "50", "--trials", "2")
    printed = run_bench("pipeline_bench.py", "--home", str(tmp_path), "--snapshot-rows", "2000", *wide, timeout=2400)
    for pipeline in ("snapshot, 2,000 rows", f"flights, {SMOKE_DAYS} days of drops"):
        whole_run = rf"\| {pipeline} \| \*\*whole run\*\* \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+x \| [\d.]+x \|"
        assert re.search(whole_run, printed), printed[-2000:]
    assert "(2,000 rows, 51 features, job titles drawn from 50, 7 grades, 2 trials)" in printed, printed[-2000:]
    for stage in ("data_engineering", "model_engineering"):
        assert re.search(rf"\| {stage} \| \*\*whole run\*\* \| [\d.]+ \|", printed), printed[-2000:]
    assert re.search(r"\| model_engineering \| package \| [\d.]+ \|", printed), printed[-2000:]
    cached = r"\| model_engineering, cached \| \*\*whole run\*\* \| [\d.]+ \| [\d.]+x \|"
    assert re.search(cached, printed), printed[-2000:]


def test_the_packaging_benchmark_runs() -> None:
    printed = run_bench("package_bench.py", "--rows", "2000", "--rounds", "5", "--categories", "30")
    assert "| model | categories | trees | flightplan s | onnxmltools s |" in printed, printed[-2000:]
    for model, trees in (("multiclass", 35), ("regression", 5)):
        assert re.search(rf"\| {model} \| 30 \| {trees} \| [\d.]+ \| [\d.]+ \| \d+x \|", printed), printed[-2000:]


@pytest.fixture(scope="module")
def served_home(trained_home: Path) -> tuple[Path, str]:
    """The training benchmark's home once the serving benchmark has run on it (it registers the model and promotes
    it to champion, which batch scoring scores with), and what the serving benchmark printed."""
    printed = run_bench("serve_bench.py", "--home", str(trained_home), "--seconds", "1", "--rounds", "2")
    return trained_home, printed


def test_the_serving_benchmark_runs(served_home: tuple[Path, str]) -> None:
    _, printed = served_home
    assert "| rows/request | connections | flightplan req/s |" in printed, printed[-2000:]
    assert "| dataframe_split | 1000 | 8 |" in printed, printed[-2000:]
    assert "| typed records, challenger in shadow | 1 | 8 |" in printed, printed[-2000:]
    columns = "| p99 ms, no shadow | p99 ms, challenger in shadow | added p99 ms by round |"
    assert columns + " requests with shadow CPU > budget, by round | p99 within budget |" in printed
    assert "| rows shadowed | answer slices over budget | commit slices over budget | req/s ratio |" in printed
    assert re.search(r"\| \d[\d,]* of [1-9][\d,]* \| \d[\d,]* of \d[\d,]* \| [\d.]+ \|", printed), printed[-2000:]
    cell = (
        r"\| 1 \| 1 \| [\d.]+ \| [\d.]+ \| [-+][\d.]+ [-+][\d.]+ \| [\d.]+% [\d.]+% "
        r"\| (yes|no|rounds disagree) \| \d+% \|"
    )
    assert re.search(cell, printed), printed[-2000:]


def test_the_batch_scoring_benchmark_runs(served_home: tuple[Path, str]) -> None:
    home, _ = served_home
    printed = run_bench("batch_bench.py", "--home", str(home), "--sizes", "20000", "--repeats", "1")
    assert re.search(r"\| 20,000 \| [\d.]+ \| [\d,]+ \| [\d.]+ \| [\d,]+ \| [\d.]+ \|", printed), printed[-2000:]


def test_the_monitoring_benchmark_runs(trained_home: Path) -> None:
    printed = run_bench("monitor_bench.py", "--home", str(trained_home), "--rows", "5000", "--runs", "2")
    assert "median ratio of 2 runs" in printed and "Evidently DataDriftPreset" in printed, printed[-2000:]
    assert "same per-column verdicts: yes" in printed, printed[-2000:]


def test_the_log_benchmark_runs(trained_home: Path) -> None:
    printed = run_bench("log_bench.py", "--home", str(trained_home), "--rows", "3000")
    assert "| write, 1-row requests, 8 per commit |" in printed, printed[-2000:]
    assert "| read, the monitoring window" in printed, printed[-2000:]


def test_the_scale_benchmark_runs(trained_home: Path) -> None:
    printed = run_bench("scale_bench.py", "--home", str(trained_home), "--sizes", "20000")
    assert "executors_peak_mib" in printed, printed[-2000:]
