"""Faults injected into a real Airflow (API server, scheduler, dag-processor, LocalExecutor on SQLite) while it
runs the DAGs, on a home of its own whose runs and models go to an MLflow tracking server the tests stop and
start again:

- a task's worker process killed with SIGKILL in the middle of ingestion, of training and of promotion;
- the scheduler killed and started again while a run is in flight;
- the tracking server down for a while during a training run.

Each run must end as a run without the fault would: its retry completes, the data equals the clean chain's
(row for row, one file per day, nothing left in staging), one registered version per run, the aliases whole."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from flightplan.config import load_pipeline
from flightplan.dev.airflow_rest import AirflowApi
from flightplan.layout import Layout
from flightplan.settings import Settings, load_settings

from tests.support.airflow import airflow_api, migrated_airflow, running_airflow
from tests.support.engines import TrackingServer
from tests.support.pipeline import END_DAY, FIRST_DAY, data_digest, leftovers, run_data_engineering
from tests.support.service import service_process, token_environment

TOKEN = "faults-token"
CONF = {"start": FIRST_DAY.isoformat(), "end": END_DAY.isoformat()}
pytestmark = pytest.mark.airflow


@dataclasses.dataclass
class FaultStack:
    env: dict[str, str]
    settings: Settings
    layout: Layout
    tracking: TrackingServer
    api: AirflowApi
    base: str


def slow_training_pipelines(settings: Settings, folder: Path) -> Path:
    """The flights pipeline whose final training lasts seconds on a small search: shallow trees learning so slowly
    that the best round is one of the last of 10,000, so the final training (as many rounds as the best trial's)
    is long enough for its first rounds to reach MLflow and its log well before it ends. Any model is accepted."""
    config = yaml.safe_load((settings.pipelines_dir / "flights.yaml").read_text())
    tuning = config["model"]["tuning"]
    tuning.update({"trials": 2, "num_boost_round": 10000, "early_stopping_rounds": 10000})
    tuning["fixed"]["max_depth"] = 3
    tuning["space"] = {"learning_rate": {"type": "float", "low": 0.0002, "high": 0.0003}}
    config["model"]["acceptance"] = {"minimum": {}, "maximum": {}, "champion_margin": -1.0}
    config.setdefault("deployment", {})["margin"] = -1.0
    (folder / "flights.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def faults(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings, spark_connect: dict[str, str]
) -> Iterator[FaultStack]:
    from flightplan.dev.replay import replay

    home = tmp_path_factory.mktemp("faults-home")
    tracking = TrackingServer(home)
    tracking.start()
    pipelines = slow_training_pipelines(settings, tmp_path_factory.mktemp("pipelines-faults"))
    own = {
        "FLIGHTPLAN_HOME": str(home),
        "FLIGHTPLAN_PIPELINES_DIR": str(pipelines),
        "MLFLOW_TRACKING_URI": tracking.url,
    }
    fault_settings = load_settings(own)
    layout = Layout(fault_settings, load_pipeline("flights", pipelines))
    replay(layout, FIRST_DAY, END_DAY)
    try:
        service_env = {**os.environ, **own}
        with service_process(fault_settings, TOKEN, poll_seconds=3600, wait_ready=False, env=service_env) as service:
            env = migrated_airflow(
                fault_settings,
                **own,
                **spark_connect,  # a killed task's jobs may run on in the server: its writes must never land
                FLIGHTPLAN_SERVICE_URL=service["url"],
                **token_environment(TOKEN),
                FLIGHTPLAN_TASK_RETRY_DELAY_SECONDS="2",
            )
            with running_airflow(env) as base:
                api = airflow_api(base, env)
                # Each test unpauses the DAG it runs: an asset event does not start a paused DAG's run.
                for dag_id in ("flights.data_engineering", "flights.model_engineering", "flights.deployment"):
                    api.wait_until_parsed(dag_id)
                yield FaultStack(
                    env, dataclasses.replace(fault_settings, airflow_url=base), layout, tracking, api, base
                )
    finally:
        tracking.stop()


def task_process(ti_id: str) -> psutil.Process | None:
    """The process running a task's code: Airflow's task runner titles itself `airflow worker -- <ti id>`."""
    for process in psutil.process_iter(["cmdline"]):
        if f"airflow worker -- {ti_id}" in " ".join(process.info["cmdline"] or []):
            return process
    return None


def kill_task_when(
    api: AirflowApi, dag_id: str, run_id: str, task_id: str, ready: Callable[[], bool], timeout: float = 600
) -> None:
    """SIGKILL the process of the task's first try as soon as ``ready()`` holds while it runs. The process is looked
    for by its title every few milliseconds: a task whose libraries its worker preloaded may run for a fifth of a
    second. The API is asked only once a second, to fail at once when the task ended unseen."""
    deadline = time.monotonic() + timeout
    ti_id = api.task_instance(dag_id, run_id, task_id)["id"]
    next_look = 0.0
    while (worker := task_process(ti_id)) is None:
        now = time.monotonic()
        assert now < deadline, f"{dag_id}.{task_id} never ran"
        if now >= next_look:
            state = api.task_instance(dag_id, run_id, task_id)["state"]
            assert state in (None, "scheduled", "queued", "running"), f"{task_id} is {state} before the kill"
            next_look = now + 1.0
        time.sleep(0.005)
    while not ready():
        assert worker.is_running(), f"{dag_id}.{task_id} ended before the point to kill it"
        assert time.monotonic() < deadline, f"{dag_id}.{task_id} never reached the point to kill it"
        time.sleep(0.01)
    worker.kill()


def wait_succeeded(api: AirflowApi, dag_id: str, run_id: str) -> dict[str, str | None]:
    state = api.wait_for_run(dag_id, run_id, timeout=900)
    states = api.task_states(dag_id, run_id)
    assert state == "success", states
    return states


def try_number(api: AirflowApi, dag_id: str, run_id: str, task_id: str) -> int:
    return int(api.task_instance(dag_id, run_id, task_id)["try_number"])


@contextmanager
def scheduler_restarted(stack: FaultStack) -> Iterator[None]:
    """Kill the scheduler (SIGKILL, its executor's workers left running as orphans); start a new one at exit."""
    from flightplan.dev.stack import airflow_api_environment, launch, processes, running_pid

    scheduler = next(p for p in processes(stack.settings, "airflow") if p.name == "airflow-scheduler")
    pid = running_pid(stack.settings, scheduler.name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    try:
        yield
    finally:
        launch(stack.settings, scheduler, {**stack.env, **airflow_api_environment(stack.base)})


def test_a_killed_ingestion_and_a_restarted_scheduler_end_as_the_clean_chain(
    faults: FaultStack, spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingestion's worker is killed once it has begun staging the days; later the scheduler is killed while wrangling
    runs and a new one takes over. The retry and the new scheduler finish the run, and the data equals the clean
    chain's, run first in this process on the same home."""
    api, data_root = faults.api, faults.settings.data_root
    for name in ("FLIGHTPLAN_HOME", "FLIGHTPLAN_PIPELINES_DIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, faults.env[name])
    run_data_engineering(FIRST_DAY, END_DAY)
    monkeypatch.undo()
    clean = data_digest(data_root, "flights")
    assert {folder.split("/")[0] for folder in clean} >= {"curated", "wrangled", "labeled", "splits"}, clean

    api.set_paused("flights.data_engineering", False)
    # fresh: the split is made again too (the clean chain's split has the same inputs, which it would reuse)
    run_id = api.trigger("flights.data_engineering", {**CONF, "fresh": True})["dag_run_id"]
    from flightplan.data import ingest
    from flightplan.data.partitions import interval_key

    staging = faults.layout.staging(ingest.STAGE, interval_key(FIRST_DAY, END_DAY))
    kill_task_when(api, "flights.data_engineering", run_id, "ingest", staging.exists)
    # On the stack's Spark a stage runs for a few seconds only: looked at often, not to wait for a state long gone.
    api.wait_for_task("flights.data_engineering", run_id, "wrangle", ("scheduled", "queued", "running"), 900, 0.1)
    with scheduler_restarted(faults):
        time.sleep(5)
    wait_succeeded(api, "flights.data_engineering", run_id)
    assert try_number(api, "flights.data_engineering", run_id, "ingest") == 2

    assert data_digest(data_root, "flights") == clean
    assert leftovers(data_root) == []


def model_runs(faults: FaultStack, run_id: str) -> list[Any]:
    """The MLflow runs an Airflow run of model engineering left: its model run and its trials."""
    from flightplan.tracking import client, model_experiment

    tracking = client(faults.settings)
    experiment = tracking.get_experiment_by_name(model_experiment(faults.layout.config))
    assert experiment is not None
    return list(tracking.search_runs([experiment.experiment_id], filter_string=f"tags.`airflow.run_id` = '{run_id}'"))


def streamed_rounds(faults: FaultStack, run_id: str) -> int:
    """How many per-round points of the final training reached MLflow so far."""
    from flightplan.model.train import VALIDATION
    from flightplan.tracking import client

    models = [r for r in model_runs(faults, run_id) if r.data.tags.get("flightplan.role") == "model"]
    if not models:
        return 0
    tracking = client(faults.settings)
    names = [n for n in models[0].data.metrics if n.startswith(f"{VALIDATION}_") and n != f"{VALIDATION}_rows"]
    return max((len(tracking.get_metric_history(models[0].info.run_id, n)) for n in names), default=0)


def registered_versions(faults: FaultStack, run_id: str) -> list[Any]:
    from flightplan.tracking import client

    name = faults.layout.config.registered_model
    return [
        v
        for v in client(faults.settings).search_model_versions(f"name = '{name}'")
        if v.tags.get("airflow.run_id") == run_id
    ]


def test_a_killed_training_and_a_tracking_outage_leave_one_finished_run_and_one_version(faults: FaultStack) -> None:
    """A clean run, then one whose training worker is killed once its first rounds reached MLflow, and whose
    retry finds the tracking server down for its first 20 s. The faulted run ends with the clean run's model: the same
    test metrics, one finished MLflow run with one search's trials, one registered version."""
    api = faults.api
    api.set_paused("flights.model_engineering", False)
    # fresh: both runs tune and train, however alike their inputs (flightplan.model.cache would reuse)
    clean = api.trigger("flights.model_engineering", {"reason": "clean", "fresh": True})["dag_run_id"]
    wait_succeeded(api, "flights.model_engineering", clean)

    faulted = api.trigger("flights.model_engineering", {"reason": "faults", "fresh": True})["dag_run_id"]
    rounds_at_kill: list[int] = []
    live_log: list[str] = []

    def training_streams() -> bool:
        """Its rounds reach MLflow, and its progress lines the log view of the running task (read from the worker's
        file: the log servers are off, `--skip-serve-logs`)."""
        rounds_at_kill.append(streamed_rounds(faults, faulted))
        if rounds_at_kill[-1] == 0:
            return False
        live_log[:] = api.task_log("flights.model_engineering", faulted, "train", 1)
        return any(line.startswith("round ") for line in live_log)

    kill_task_when(api, "flights.model_engineering", faulted, "train", training_streams)
    deadline = time.monotonic() + 300
    while (retry := api.task_instance("flights.model_engineering", faulted, "train"))["try_number"] < 2 or retry[
        "state"
    ] != "running":
        assert time.monotonic() < deadline, retry
        time.sleep(0.2)
    faults.tracking.stop()
    time.sleep(20)
    faults.tracking.start()
    wait_succeeded(api, "flights.model_engineering", faulted)

    assert try_number(api, "flights.model_engineering", faulted, "train") == 2
    results, trained_rounds = {}, {}
    for run_id in (clean, faulted):
        runs = model_runs(faults, run_id)
        models = [r for r in runs if r.data.tags.get("flightplan.role") == "model"]
        trials = [r for r in runs if r.data.tags.get("flightplan.role") == "trial"]
        assert len(models) == 1 and models[0].info.status == "FINISHED"
        assert len(trials) == faults.layout.config.model.tuning.trials
        assert [v.run_id for v in registered_versions(faults, run_id)] == [models[0].info.run_id]
        results[run_id] = {k: v for k, v in models[0].data.metrics.items() if k.startswith("test_")}
        trained_rounds[run_id] = int(models[0].data.params["rounds"])
    assert 0 < rounds_at_kill[-1] < trained_rounds[faulted], (
        f"the kill came after {rounds_at_kill[-1]} of {trained_rounds[faulted]} rounds"
    )
    assert results[faulted] == results[clean] and results[clean]


def test_a_killed_promotion_is_finished_by_its_retry(faults: FaultStack) -> None:
    """The deployment of the newest version, its promote worker killed as soon as it runs: the retry moves the
    aliases whole, and the service reloads and answers with the new champion."""
    from flightplan.model.registry import CHAMPION, alias_version
    from flightplan.tracking import client

    api, name = faults.api, faults.layout.config.registered_model
    tracking = client(faults.settings)
    version = max(int(v.version) for v in tracking.search_model_versions(f"name = '{name}'"))
    before = alias_version(faults.settings, name, CHAMPION)
    api.set_paused("flights.deployment", False)
    conf = {"version": str(version), "reason": "faults"}
    run_id = api.trigger("flights.deployment", conf)["dag_run_id"]
    kill_task_when(api, "flights.deployment", run_id, "promote", lambda: True)
    states = wait_succeeded(api, "flights.deployment", run_id)

    assert states["roll_back"] == "skipped" and try_number(api, "flights.deployment", run_id, "promote") == 2
    assert alias_version(faults.settings, name, CHAMPION) == str(version) != before
    assert tracking.get_model_version(name, str(version)).tags["flightplan.promoted_by"] == run_id
