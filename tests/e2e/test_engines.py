"""The DAGs on production engines, switched by configuration alone, on a home of their own:

- Airflow's metadata on PostgreSQL, first with the LocalExecutor, then with the CeleryExecutor on Redis and two
  Celery workers;
- ingestion and `xgboost.spark` training on a Spark standalone cluster of two workers;
- every run and model in an MLflow tracking server whose store is PostgreSQL, its artifacts kept by the server;
- the inference service loading the champion from that server and logging every prediction to PostgreSQL."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from flightplan.config import load_pipeline
from flightplan.dev.airflow_rest import AirflowApi
from flightplan.layout import Layout
from flightplan.settings import Settings, load_settings

from tests.support.airflow import AIRFLOW, airflow_api, migrated_airflow, running_airflow
from tests.support.engines import (
    SparkCluster,
    background,
    mlflow_server,
    pipelines_with,
    postgres_database,
    postgres_problem,
    redis_database,
    redis_problem,
    require,
    spark_cluster,
)
from tests.support.pipeline import END_DAY, FIRST_DAY
from tests.support.service import service_process, token_environment

TOKEN = "engines-token"
CONF = {"start": FIRST_DAY.isoformat(), "end": END_DAY.isoformat()}
DE_TASKS = ["wait_for_landing", "ingest", "profile", "validate", "wrangle", "label", "split"]
pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    require("Java (for the Spark cluster)", None if shutil.which("java") else "no `java` on PATH")
    with spark_cluster(tmp_path_factory.mktemp("spark-cluster"), workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require("PostgreSQL", postgres_problem())
    folder = tmp_path_factory.mktemp("mlflow-server")
    with (
        postgres_database("mlflow") as store,
        mlflow_server(store, folder / "artifacts", folder / "server.log") as url,
    ):
        yield {"url": url, "artifacts": folder / "artifacts"}


@pytest.fixture(scope="module")
def predictions_db() -> Iterator[str]:
    require("PostgreSQL", postgres_problem())
    with postgres_database("predictions") as url:
        yield url


@pytest.fixture(scope="module")
def airflow_db() -> Iterator[str]:
    require("PostgreSQL", postgres_problem())
    with postgres_database("airflow") as url:
        yield url


@pytest.fixture(scope="module")
def engines_env(
    settings: Settings,
    cluster: SparkCluster,
    tracking_server: dict[str, Any],
    predictions_db: str,
    airflow_db: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The embedded Airflow's environment with every engine swapped for its production one, training with
    `xgboost.spark` on both workers."""
    pipelines = pipelines_with(settings, tmp_path_factory.mktemp("pipelines-engines"), {"engine": "spark"})
    engines = {
        "FLIGHTPLAN_HOME": str(tmp_path_factory.mktemp("engines-home")),
        "FLIGHTPLAN_PIPELINES_DIR": str(pipelines),
        "FLIGHTPLAN_SPARK_MASTER": cluster.master,
        "FLIGHTPLAN_INGEST_ENGINE": "spark",
        "MLFLOW_TRACKING_URI": tracking_server["url"],
        "FLIGHTPLAN_PREDICTIONS_DB": predictions_db,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
    }
    return migrated_airflow(load_settings(engines), **engines)


@pytest.fixture(scope="module")
def engines_layout(engines_env: dict[str, str]) -> Layout:
    settings = load_settings(engines_env)
    return Layout(settings, load_pipeline("flights", settings.pipelines_dir))


def applications_per_worker(cluster: SparkCluster) -> dict[str, int]:
    """Per worker, how many Spark applications ran executors there (each leaves a folder in its work dir)."""
    return {d.name: len(list(d.glob("app-*"))) if d.exists() else 0 for d in cluster.work_dirs}


def test_the_dags_run_on_postgres_a_spark_cluster_and_a_tracking_server(
    engines_env: dict[str, str], engines_layout: Layout, cluster: SparkCluster, tracking_server: dict[str, Any]
) -> None:
    """Triggered over the REST API with the LocalExecutor: data engineering, then model engineering, whose
    challenger the Models page then shows."""
    from flightplan.dev.replay import replay
    from flightplan.tracking import client

    replay(engines_layout, FIRST_DAY, END_DAY)
    with running_airflow(engines_env) as base:
        assert httpx.get(f"{base}/api/v2/dags", timeout=30).status_code == 401
        api = airflow_api(base, engines_env)
        for dag_id in ("flights.data_engineering", "flights.model_engineering"):
            api.wait_until_parsed(dag_id)
            api.set_paused(dag_id, False)
        data_run = api.trigger("flights.data_engineering", CONF)["dag_run_id"]
        assert api.wait_for_run("flights.data_engineering", data_run) == "success", api.task_states(
            "flights.data_engineering", data_run
        )
        assert api.task_states("flights.data_engineering", data_run) == dict.fromkeys(DE_TASKS, "success")
        events = api.http.get(
            "/assets/events", params={"source_dag_id": "flights.data_engineering", "source_run_id": data_run}
        )
        assert [e["extra"]["pipeline"] for e in events.json()["asset_events"]] == ["flights"]
        after_data = applications_per_worker(cluster)
        assert after_data["worker-0"] == after_data["worker-1"] >= 1, after_data  # every task's executors on both
        executor_workers_hold_the_stages_modules(load_settings(engines_env))

        model_run = api.trigger("flights.model_engineering", {"trials": 2, "reason": "engines"})
        run_id = model_run["dag_run_id"]
        assert api.wait_for_run("flights.model_engineering", run_id) == "success", api.task_states(
            "flights.model_engineering", run_id
        )
        models_page_answers_only_a_logged_in_airflow_user(base, api, engines_layout.settings)
    after_model = applications_per_worker(cluster)
    assert after_model["worker-0"] == after_model["worker-1"] > after_data["worker-0"], after_model  # xgboost.spark
    ingest = engines_layout.settings.data_root / "manifests" / "flights" / "ingest" / "2013-01-01_2013-01-04.json"
    assert json.loads(ingest.read_text())["engine"] == "spark"

    tracking = client(engines_layout.settings)
    version = tracking.get_model_version_by_alias(engines_layout.config.registered_model, "challenger")
    assert version.run_id is not None
    run = tracking.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["airflow.dag_id"] == "flights.model_engineering"
    assert run.data.params["engine"] == "spark"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server, not by the client
    assert any(Path(tracking_server["artifacts"]).rglob("booster.ubj"))


def executor_workers_hold_the_stages_modules(settings: Settings) -> None:
    """The scheduler forked its LocalExecutor workers after importing the stages' libraries (flightplan.preload):
    each worker has them mapped before any task asks for them."""
    from flightplan.dev.stack import running_pid

    scheduler = running_pid(settings, "airflow-scheduler")
    assert scheduler is not None
    children_hold_the_preloaded_libraries(scheduler, lambda title: title.startswith("airflow worker -- LocalExecutor"))


def children_hold_the_preloaded_libraries(parent: int, forked_after_the_preload: Callable[[str], bool]) -> None:
    """Each child of ``parent`` whose title says it was forked after the preload has xgboost's library and gRPC's
    (Spark Connect's client) mapped; there is at least one."""
    import psutil

    titles = {child.pid: " ".join(child.cmdline()) for child in psutil.Process(parent).children()}
    forked = [pid for pid, title in titles.items() if forked_after_the_preload(title)]
    assert forked, titles
    for pid in forked:
        mapped = Path(f"/proc/{pid}/maps").read_text()
        assert "libxgboost" in mapped and "cygrpc" in mapped, titles[pid]


def models_page_answers_only_a_logged_in_airflow_user(base: str, api: AirflowApi, settings: Settings) -> None:
    """The plugin's pages inside the API server: refused without Airflow's token, shown with it (the version just
    registered in the tracking server); a deploy from the page starts a deployment run as that user."""
    from flightplan.model.registry import CHALLENGER, alias_version

    challenger = alias_version(settings, "flights-delayed", CHALLENGER)
    assert httpx.get(f"{base}/flightplan/", timeout=30).status_code == 401
    assert httpx.get(f"{base}/flightplan/", cookies={"_token": "forged"}, timeout=30).status_code in (401, 403)
    page = httpx.get(f"{base}/flightplan/", headers=api.http.headers, timeout=60)
    assert page.status_code == 200 and f"<b>challenger</b>: version {challenger}" in page.text
    assert "Signed in as admin" in page.text
    plugins = api.http.get("/plugins").json()["plugins"]
    assert any(view["href"] == "flightplan/" for p in plugins for view in p.get("external_views", []))

    api.wait_until_parsed("flights.deployment")
    deployed = httpx.post(
        f"{base}/flightplan/pipelines/flights/deploy",
        data={"version": challenger, "reason": "e2e"},
        headers=api.http.headers,
        timeout=60,
    )
    assert deployed.status_code == 200, deployed.text
    runs = api.http.get("/dags/flights.deployment/dagRuns").json()["dag_runs"]
    started = [r for r in runs if r["conf"].get("reason", "").startswith("e2e (deployed by admin")]
    assert len(started) == 1 and started[0]["conf"]["version"] == challenger
    assert started[0]["triggering_user_name"] == "admin"
    # The deployment DAG stays paused here; the run is removed so that no later run starts from it.
    api.http.delete(f"/dags/flights.deployment/dagRuns/{started[0]['dag_run_id']}").raise_for_status()


def test_the_service_loads_from_the_tracking_server_and_logs_to_postgres(
    engines_env: dict[str, str], engines_layout: Layout, predictions_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serves what the test above registered, promoted to champion by hand (the deployment DAG is tested apart)."""
    from flightplan.dev.replay import replay_traffic
    from flightplan.model.registry import CHALLENGER, CHAMPION, alias_version
    from flightplan.prediction_log import answered_versions, ground_truth, key_schema
    from flightplan.tracking import client

    settings, model = engines_layout.settings, engines_layout.config.registered_model
    version = alias_version(settings, model, CHALLENGER)
    assert version is not None, "the test above registers a challenger"
    client(settings).set_registered_model_alias(model, CHAMPION, version)

    start = datetime.now(UTC) - timedelta(minutes=1)
    with service_process(settings, TOKEN, poll_seconds=3600, wait_ready=True, env=engines_env) as service:
        for variable, value in token_environment(TOKEN).items():
            monkeypatch.setenv(variable, value)
        serving = Layout(dataclasses.replace(settings, service_url=service["url"]), engines_layout.config)
        sent = replay_traffic(serving, FIRST_DAY, END_DAY)
    assert sent["answered"] == sent["rows"] == sent["labeled"] > 1000
    logged = answered_versions(predictions_db, "flights", start, datetime.now(UTC) + timedelta(minutes=1))
    assert logged == {version: sent["answered"]}
    assert len(ground_truth(predictions_db, "flights", key_schema(engines_layout.config))) == sent["labeled"]


def test_two_celery_workers_run_data_and_model_engineering_at_once(
    engines_env: dict[str, str], engines_layout: Layout, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same metadata database under the CeleryExecutor (Redis broker, results in PostgreSQL): a data-engineering
    run of new days and a model-engineering run on the splits already there, each on its own worker, at once.
    Spark is local here (and ingestion in-process): one application would take every core of the two-worker
    cluster."""
    from flightplan.dev.replay import replay
    from flightplan.dev.stack import airflow_api_environment

    require("Redis", redis_problem())
    later, later_end = END_DAY, END_DAY + timedelta(days=3)
    replay(engines_layout, later, later_end)
    folder = tmp_path_factory.mktemp("celery")
    airflow_db = engines_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    env = {
        **engines_env,
        "FLIGHTPLAN_PIPELINES_DIR": str(pipelines_with(engines_layout.settings, folder, {"engine": "local"})),
        "FLIGHTPLAN_SPARK_MASTER": "local[1]",
        "FLIGHTPLAN_INGEST_ENGINE": "local",  # ingestion on the cluster is the test above's
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": redis_database(),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "flightplan_celery.CELERY_CONFIG",  # as the compose stack's
    }
    with running_airflow(env) as base:
        logs = [folder / f"worker-{i}.log" for i in (1, 2)]
        workers_env = {**env, **airflow_api_environment(base)}  # the workers reach the API server's execution API
        with (
            background(worker(1), logs[0], workers_env) as first,
            background(worker(2), logs[1], workers_env) as second,
        ):
            api = airflow_api(base, env)
            data_run = api.trigger("flights.data_engineering", {**CONF, "start": str(later), "end": str(later_end)})
            conf = {"trials": 2, "reason": "celery", "fresh": True}  # trains on the workers, as the first run did
            model_run = api.trigger("flights.model_engineering", conf)
            for dag_id, run in (("flights.data_engineering", data_run), ("flights.model_engineering", model_run)):
                state = api.wait_for_run(dag_id, run["dag_run_id"])
                assert state == "success", api.task_states(dag_id, run["dag_run_id"])
            data_spans = task_spans(api, "flights.data_engineering", data_run)
            model_spans = task_spans(api, "flights.model_engineering", model_run)
            for celery_worker in (first, second):
                pool_processes_hold_the_stages_modules(celery_worker.pid)
    overlapping = [
        (d, m) for d, m in itertools.product(data_spans, model_spans) if overlap(data_spans[d], model_spans[m])
    ]
    assert overlapping, (data_spans, model_spans)  # a task of each DAG ran at the same time as one of the other
    for log in logs:  # and each worker carried out tasks (the line is written per task it runs)
        assert "Executing workload in Celery" in log.read_text(), log.read_text()[-2000:]


def pool_processes_hold_the_stages_modules(worker_pid: int) -> None:
    """The Celery worker imported the stages' libraries (flightplan.preload) before it forked its pool: each pool
    process (titled by Celery, or by the last task it supervised) has them mapped. The worker's other child,
    Airflow's bundle cleanup, is forked before Celery starts."""
    children_hold_the_preloaded_libraries(
        worker_pid, lambda title: "ForkPoolWorker" in title or title.startswith("airflow supervisor")
    )


def worker(number: int) -> list[str]:
    return [AIRFLOW, "celery", "worker", "--celery-hostname", f"worker-{number}@%h", "--skip-serve-logs"]


def task_spans(api: AirflowApi, dag_id: str, triggered: dict[str, Any]) -> dict[str, tuple[datetime, datetime]]:
    """When each task of the run started and ended."""
    return {
        ti["task_id"]: (datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"]))
        for ti in api.task_instances(dag_id, triggered["dag_run_id"])
    }


def overlap(first: tuple[datetime, datetime], second: tuple[datetime, datetime]) -> bool:
    return first[0] < second[1] and second[0] < first[1]
