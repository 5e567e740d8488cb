"""data_engineering end to end through a live Airflow: its tasks on the stack's long-lived Spark Connect server,
against each task starting a Spark of its own (``FLIGHTPLAN_SPARK_REMOTE=none``), and against Connect with the
local engine for batches of up to a million rows (``FLIGHTPLAN_LOCAL_ENGINE_ROWS``), measured in the same run.

Two pipelines, in a home of their own per engine: a snapshot table drafted by ``flightplan init`` (the first
``--snapshot-rows`` rows of ggplot2's diamonds) and the demo's flights pipeline with ``FLIGHTPLAN_BENCH_DAYS``
days of daily drops (the demo's half year by default). ``flightplan up spark airflow`` starts the engine's stack
(the Connect server only for Connect); each data_engineering run is triggered over the REST API with
``logical_date: null``, one at a time, and timed by Airflow: the run from its start to its end, and each task.
The server's own start is left out, as it is paid once a day or less; its first run is in the figures.

Then, on Connect's stack, a wide table drafted by ``flightplan init``: ``--wide-rows`` rows shaped like a loan
book (packaging's benchmark table: 50 numeric columns and a job title of ``--categories`` values) with a 7-class
grade, through data_engineering and then model_engineering with ``--trials`` Optuna trials, each timed the same
way; then model_engineering once more on the same split, config and code, whose tune and train reuse the first
run's outputs (step caching), against the first. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT, FLIGHTS, WIDE = "snapshot", "flights", "loans"
START = date(2013, 1, 1)
END = START + timedelta(days=int(os.environ.get("FLIGHTPLAN_BENCH_DAYS", "181")))
CONNECT, PER_TASK, LOCAL = "Spark Connect", "a Spark per task", "Connect + local engine"
# model_engineering again on the same split, config and code: tune and train reuse the first run's outputs.
CACHED = "model_engineering, cached"
# Each engine's settings, and the folder of its home.
ENGINES = {
    CONNECT: ({}, "connect"),
    PER_TASK: ({"FLIGHTPLAN_SPARK_REMOTE": "none"}, "per-task"),
    LOCAL: ({"FLIGHTPLAN_LOCAL_ENGINE_ROWS": "1000000"}, "local"),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def engine_environment(home: Path, settings: dict[str, str]) -> dict[str, str]:
    """The whole environment of one engine's stack: the caller's without its own flightplan, MLflow and Airflow
    settings (a shell's ``FLIGHTPLAN_SPARK_REMOTE`` would measure another engine), then the engine's home, its
    own ports, only the runs triggered here, and the engine's ``settings``."""
    caller = {
        key: value for key, value in os.environ.items() if not key.startswith(("FLIGHTPLAN_", "MLFLOW_", "AIRFLOW"))
    }
    env = {
        **caller,
        "FLIGHTPLAN_HOME": str(home),
        "FLIGHTPLAN_PIPELINES_DIR": str(home / "pipelines"),
        "AIRFLOW_HOME": str(home / "airflow"),
        "FLIGHTPLAN_AIRFLOW_URL": f"http://127.0.0.1:{free_port()}",
        "FLIGHTPLAN_SPARK_SERVER": f"sc://localhost:{free_port()}",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    }
    return {**env, **settings}


def snapshot_file(base: Path, rows: int) -> Path:
    """The snapshot table's file: the first ``rows`` rows of ggplot2's diamonds."""
    from flightplan.dev.replay import load_rdataset

    target = base / f"diamonds-{rows}.csv"
    if not target.exists():
        load_rdataset("ggplot2", "diamonds").head(rows).to_csv(target, index=False)
    return target


def wide_file(base: Path, rows: int, categories: int) -> Path:
    """The wide table's file: packaging's synthetic loan book, its category codes as job titles and its signal
    cut into 7 grades of equal size."""
    import numpy as np
    import pandas as pd
    from package_bench import CLASSES, NUMERIC_COLUMNS, synthetic

    target = base / f"loans-{rows}-{categories}.csv"
    if not target.exists():
        matrix, signal = synthetic(rows, categories)
        frame = pd.DataFrame(matrix[:, :NUMERIC_COLUMNS], columns=[f"x{i:02d}" for i in range(NUMERIC_COLUMNS)])
        codes = matrix[:, NUMERIC_COLUMNS]
        frame["job_title"] = [None if np.isnan(code) else f"title {int(code)}" for code in codes]
        cuts = np.quantile(signal, np.linspace(0, 1, CLASSES + 1)[1:-1])
        frame["grade"] = np.array(list("ABCDEFG"))[np.digitize(signal, cuts)]
        frame.to_csv(target, index=False)
    return target


def draft_pipeline(env: dict[str, str], table: Path, target: str, name: str) -> None:
    """``flightplan init`` drafts the table's pipeline YAML, as a user would."""
    flightplan = str(Path(sys.executable).with_name("flightplan"))
    init = [flightplan, "init", str(table), "--target", target, "--name", name]
    result = subprocess.run(init, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"flightplan init {table} failed:\n{result.stderr}")


def prepare_home(env: dict[str, str], snapshot: Path, wide: Path, trials: int) -> None:
    """The pipelines' YAML (the snapshot's and the wide table's drafted by `flightplan init`, the latter tuned
    with ``trials`` trials) and the flights days' drops."""
    import yaml
    from flightplan.config import load_pipeline
    from flightplan.dev.replay import replay
    from flightplan.layout import Layout
    from flightplan.settings import PACKAGE_PIPELINES_DIR, load_settings

    pipelines = Path(env["FLIGHTPLAN_PIPELINES_DIR"])
    pipelines.mkdir(parents=True, exist_ok=True)
    shutil.copy(PACKAGE_PIPELINES_DIR / f"{FLIGHTS}.yaml", pipelines / f"{FLIGHTS}.yaml")
    draft_pipeline(env, snapshot, "price", SNAPSHOT)
    draft_pipeline(env, wide, "grade", WIDE)
    wide_yaml = pipelines / f"{WIDE}.yaml"
    spec = yaml.safe_load(wide_yaml.read_text())
    spec.setdefault("model", {}).setdefault("tuning", {})["trials"] = trials
    wide_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    settings = load_settings(env)
    replay(Layout(settings, load_pipeline(FLIGHTS, pipelines)), START, END)


@contextmanager
def running_stack(env: dict[str, str]) -> Iterator[Any]:
    """The engine's stack (`flightplan up spark airflow`), yielding a REST client logged in as its admin."""
    from flightplan.dev import stack
    from flightplan.dev.airflow_rest import AirflowApi
    from flightplan.settings import load_settings

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    settings = load_settings()
    try:
        stack.up(settings, REPO / "dags", REPO / "plugins", ["spark", "airflow"])
        api = AirflowApi(settings.airflow_url, settings.airflow_home)
        try:
            yield api
        finally:
            api.close()
    finally:
        stack.down(settings, ["spark", "airflow"])
        os.environ.clear()
        os.environ.update(saved)


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def timed_run(api: Any, pipeline: str, conf: dict[str, str]) -> dict[str, float]:
    """One data_engineering run of ``pipeline``, triggered now: its seconds from start to end, and each task's."""
    from flightplan.orchestration import dag_id

    dag = dag_id(pipeline, "data_engineering")
    api.wait_until_parsed(dag)
    api.set_paused(dag, False)
    return run_timings(api, dag, api.trigger(dag, conf)["dag_run_id"])


def run_timings(api: Any, dag: str, run_id: str) -> dict[str, float]:
    """Once run ``run_id`` of ``dag`` has ended well: its seconds from start to end, and each task's."""
    state = api.wait_for_run(dag, run_id, timeout=1800)
    if state != "success":
        raise SystemExit(f"{dag} {run_id} ended {state}: {api.task_states(dag, run_id)}")
    run = api.run(dag, run_id)
    tasks = sorted(api.task_instances(dag, run_id), key=lambda task: task["start_date"] or "")
    retried = [task["task_id"] for task in tasks if int(task["try_number"]) > 1]
    if retried:  # the run's time would hold a failed try, its task's duration not
        raise SystemExit(f"{dag} {run_id}: {retried} needed more than one try; the figures would not compare")
    timings = {task["task_id"]: float(task["duration"] or 0.0) for task in tasks}
    return {"run": seconds_between(run["start_date"], run["end_date"]), **timings}


def chained_runs(api: Any, pipeline: str) -> dict[str, dict[str, float]]:
    """data_engineering of ``pipeline``, then model_engineering on the splits it made, each triggered over the REST
    API (the bench's Airflow creates no asset-triggered run: only those triggered here): each run's seconds and its
    tasks'."""
    from flightplan.orchestration import dag_id

    model_dag = dag_id(pipeline, "model_engineering")
    data = timed_run(api, pipeline, {})
    api.wait_until_parsed(model_dag)
    api.set_paused(model_dag, False)
    # fresh: the run tunes and trains even when an earlier one had the same split (flightplan.model.cache)
    first = run_timings(api, model_dag, api.trigger(model_dag, {"fresh": True})["dag_run_id"])
    again = api.trigger(model_dag, {})["dag_run_id"]
    cached = run_timings(api, model_dag, again)
    for step in ("tune", "train"):
        if not any("cache hit: run" in line for line in api.task_log(model_dag, again, step)):
            raise SystemExit(f"{model_dag} {again}: {step} did the work; the cached run's figures would be mislabeled")
    return {"data_engineering": data, "model_engineering": first, CACHED: cached}


def measure(args: argparse.Namespace) -> dict[str, dict[str, dict[str, Any]]]:
    """By engine, by pipeline: the run's and its tasks' seconds; the wide table's two stages on Connect only."""
    snapshot = snapshot_file(args.home, args.snapshot_rows)
    wide = wide_file(args.home, args.wide_rows, args.categories)
    measured: dict[str, dict[str, dict[str, Any]]] = {}
    for engine, (settings, folder) in ENGINES.items():
        home = args.home / folder
        shutil.rmtree(home, ignore_errors=True)
        env = engine_environment(home, settings)
        prepare_home(env, snapshot, wide, args.trials)
        with running_stack(env) as api:
            measured[engine] = {
                SNAPSHOT: timed_run(api, SNAPSHOT, {}),
                FLIGHTS: timed_run(api, FLIGHTS, {"start": str(START), "end": str(END)}),
            }
            if engine == CONNECT:
                measured[engine][WIDE] = chained_runs(api, WIDE)
        if engine == LOCAL:
            require_local_rewrites(home)
        print(f"{engine}: {measured[engine]}", flush=True)
    return measured


def require_local_rewrites(home: Path) -> None:
    """Fails unless every wrangle and label manifest of the home says the local engine wrote its rows: a batch the
    engine refused would be timed on Spark under its name."""
    manifests = [path for stage in ("wrangle", "label") for path in home.glob(f"**/manifests/*/{stage}/*.json")]
    on_spark = [str(path) for path in manifests if json.loads(path.read_text()).get("engine") != "local"]
    if not manifests or on_spark:
        raise RuntimeError(f"not written by the local engine: {on_spark or 'no wrangle or label manifest'}")


def report(measured: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    connect = measured[CONNECT]
    titles = {
        SNAPSHOT: f"snapshot, {args.snapshot_rows:,} rows",
        FLIGHTS: f"flights, {(END - START).days} days of drops",
    }
    print("\n## data_engineering through a live Airflow, seconds\n")
    print(f"| pipeline | step | {' | '.join(ENGINES)} | {PER_TASK} / Connect | local engine / Connect |")
    print(f"|---|---|{'---:|' * (len(ENGINES) + 2)}")
    for pipeline, title in titles.items():
        for step in connect[pipeline]:
            seconds = [measured[engine][pipeline].get(step, 0.0) for engine in ENGINES]
            ratios = [f"{each / seconds[0]:.1f}x" if seconds[0] else "-" for each in seconds[1:]]
            name = "**whole run**" if step == "run" else step
            print(f"| {title} | {name} | {' | '.join(f'{each:.1f}' for each in seconds)} | {' | '.join(ratios)} |")
    from package_bench import CLASSES, NUMERIC_COLUMNS

    title = (
        f"{args.wide_rows:,} rows, {NUMERIC_COLUMNS + 1} features, job titles drawn from {args.categories:,}, "
        f"{CLASSES} grades, {args.trials} trials"
    )
    print(f"\n## A wide table through a live Airflow on Spark Connect ({title}), seconds\n")
    print("| DAG | step | seconds | cached / first |")
    print("|---|---|---:|---:|")
    first = connect[WIDE]["model_engineering"]
    for stage, timings in connect[WIDE].items():
        for step, seconds in timings.items():
            ratio = f"{seconds / first[step]:.2f}x" if stage == CACHED and first.get(step) else ""
            print(f"| {stage} | {'**whole run**' if step == 'run' else step} | {seconds:.1f} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="where the engines' homes are made (replaced)")
    parser.add_argument("--snapshot-rows", type=int, default=10_000)
    parser.add_argument("--wide-rows", type=int, default=10_000)
    parser.add_argument("--categories", type=int, default=5_000, help="distinct job titles of the wide table")
    parser.add_argument("--trials", type=int, default=20, help="Optuna trials of the wide table's model")
    args = parser.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    args.home = args.home.resolve()
    report(measure(args), args)


if __name__ == "__main__":
    main()
