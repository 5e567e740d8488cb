"""Packaging benchmark: a booster with a high-cardinality categorical converted to ONNX by flightplan
(``tree_onnx``: one TreeEnsemble node per split, a categorical split's set in that node) and by onnxmltools
(one node per category of a split), the same boosters in the same run.

The table is synthetic, shaped like a loan book: ``--rows`` rows, 50 numeric columns and one categorical column
(a free-text job title) of C distinct values. Per C, a 7-class model (multi:softprob) and a regression train
``--rounds`` rounds of depth 6; each converter converts them, onnxmltools in a child process stopped after
``--peer-seconds`` (its time grows with the product of the set sizes along a tree's paths). Each graph is then
checked against the booster's own predictions on every row. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NUMERIC_COLUMNS = 50
CLASSES = 7
TASKS = {"multiclass": "multi:softprob", "regression": "reg:squarederror"}


def synthetic(rows: int, categories: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The matrix (numeric columns, then the category code; 3% missing) and a signal driven by both."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, NUMERIC_COLUMNS)).astype(np.float32)
    code = rng.integers(0, categories, rows)
    signal = rng.normal(size=categories)[code] + numeric[:, :5].sum(axis=1) / 2
    column = code.astype(np.float32)
    column[rng.random(rows) < 0.03] = np.nan
    return np.column_stack([numeric, column]), signal


def trained(task: str, matrix: np.ndarray, signal: np.ndarray, rounds: int) -> Any:
    import xgboost as xgb

    params: dict[str, Any] = {"objective": TASKS[task], "max_depth": 6, "nthread": 2, "tree_method": "hist", "seed": 0}
    if task == "multiclass":
        params["num_class"] = CLASSES
        labels = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, CLASSES + 1)[1:-1]))
    else:
        labels = 100 * signal
    types = ["q"] * NUMERIC_COLUMNS + ["c"]
    data = xgb.DMatrix(matrix, labels, feature_types=types, enable_categorical=True)
    return xgb.train(params, data, rounds)


def ours(booster: Any, n_features: int) -> tuple[float, bytes]:
    from flightplan.model.tree_onnx import booster_to_onnx

    started = time.perf_counter()
    model = booster_to_onnx(booster, n_features)
    return time.perf_counter() - started, model


def peer(booster_file: Path, n_features: int, seconds: int) -> str:
    """onnxmltools' conversion in a child process, which stops it after ``seconds`` of converting: its seconds,
    "stopped", or "failed" (a crash, its reason on stderr)."""
    command = [sys.executable, __file__, "--peer-convert", str(booster_file), str(n_features), str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 300, check=False)
    if done.returncode != 0:
        print(f"onnxmltools failed on {booster_file.name}: {done.stderr[-2000:]}", file=sys.stderr)
        return "failed"
    return done.stdout.strip().splitlines()[-1]


def peer_convert(booster_file: str, n_features: int, seconds: int) -> None:
    """The child's work: onnxmltools' conversion of the booster, timed, stopped by an alarm after ``seconds``
    (the recursion limit raised, as its unrolled category chains nest deeper than Python's default)."""
    import onnxmltools
    import xgboost as xgb
    from onnxmltools.convert.common.data_types import FloatTensorType

    def stop(*_: Any) -> None:
        raise TimeoutError

    booster = xgb.Booster(model_file=booster_file)
    sys.setrecursionlimit(1_000_000)
    signal.signal(signal.SIGALRM, stop)
    started = time.perf_counter()
    signal.alarm(seconds)
    try:
        onnxmltools.convert_xgboost(
            booster, initial_types=[("input", FloatTensorType([None, n_features]))], target_opset=15
        )
    except TimeoutError:
        print("stopped")
        return
    signal.alarm(0)
    print(time.perf_counter() - started)


def parity(booster: Any, model: bytes, matrix: np.ndarray, task: str) -> float:
    """The largest scaled difference between the graph's answers and the booster's, on every row."""
    from flightplan.model import package
    from flightplan.model.train import predict

    native = predict(booster, matrix, task)
    converted = package.predict(package.session(model, threads=1), matrix, task)  # as packaging checks it
    return package.parity(native, converted, 1e-5).max_scaled_diff


def measure(task: str, categories: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    matrix, signal = synthetic(args.rows, categories)
    booster = trained(task, matrix, signal, args.rounds)
    booster_file = folder / f"{task}-{categories}.ubj"
    booster.save_model(str(booster_file))
    seconds, model = ours(booster, matrix.shape[1])
    figures = {
        "task": task,
        "categories": categories,
        "trees": booster.num_boosted_rounds() * (CLASSES if task == "multiclass" else 1),
        "flightplan_s": seconds,
        "flightplan_mb": len(model) / 1e6,
        "flightplan_parity": parity(booster, model, matrix, task),
        "onnxmltools": peer(booster_file, matrix.shape[1], args.peer_seconds),
    }
    print(json.dumps(figures), flush=True)
    return figures


def print_table(results: list[dict[str, Any]], peer_seconds: int) -> None:
    columns = "onnxmltools / flightplan | flightplan graph MB | flightplan parity"
    print(f"\n| model | categories | trees | flightplan s | onnxmltools s | {columns} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ours, theirs = r["flightplan_s"], r["onnxmltools"]
        if theirs == "stopped":
            shown, ratio = f"stopped at {peer_seconds}", f"> {peer_seconds / ours:,.0f}x"
        elif theirs == "failed":
            shown, ratio = "failed", "-"
        else:
            shown, ratio = f"{float(theirs):.2f}", f"{float(theirs) / ours:,.0f}x"
        print(
            f"| {r['task']} | {r['categories']:,} | {r['trees']} | {ours:.2f} | {shown} | {ratio} "
            f"| {r['flightplan_mb']:.1f} | {r['flightplan_parity']:.1e} |"
        )


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--peer-convert":
        peer_convert(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--categories", type=int, nargs="+", default=[30, 300, 5000])
    parser.add_argument("--peer-seconds", type=int, default=120, help="onnxmltools is stopped after this long")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="package-bench-"))
    results = [measure(task, count, args, folder) for count in args.categories for task in TASKS]
    print_table(results, args.peer_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
