"""A real Airflow on a temporary AIRFLOW_HOME (SQLite, LocalExecutor): its environment and users, its
processes, a REST client logged in as its admin, and `airflow dags test`."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flightplan.dev.airflow_rest import ADMIN, AirflowApi
from flightplan.settings import Settings, airflow_environment, load_settings

from tests.support.pipeline import REPO
from tests.support.service import free_port

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


VIEWER, OPERATOR = "viewer", "operator"


def migrated_airflow(settings: Settings, **extra: str) -> dict[str, str]:
    """The embedded Airflow's environment for ``settings`` (plus ``extra``), its metadata database migrated."""
    env = {
        **os.environ,
        **airflow_environment(settings, REPO / "dags", REPO / "plugins"),
        # A user of each kind the Models page tells apart: one who may only read, one who may also run DAGs.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin,{VIEWER}:viewer,{OPERATOR}:op",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        # Only the runs a test triggers: no run for yesterday's interval appears when a DAG is unpaused.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        **extra,
    }
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    return env


@contextmanager
def running_airflow(env: dict[str, str]) -> Iterator[str]:
    """The embedded stack's Airflow processes (API server, scheduler, dag-processor, triggerer) on a free port;
    yields the base URL once the API answers, stops them all at exit (their logs: ``<home>/stack/``)."""
    from flightplan.dev.stack import airflow_api_environment, launch, processes, stop, wait_ready

    url = f"http://127.0.0.1:{free_port()}"
    settings = dataclasses.replace(load_settings(env), airflow_url=url)
    env = {**env, **airflow_api_environment(url)}
    started = processes(settings, "airflow")
    try:
        for process in started:
            launch(settings, process, env)
        wait_ready(settings, started)
        yield url
    finally:
        for process in started:
            stop(settings, process.name)


def airflow_api(base: str, env: dict[str, str]) -> AirflowApi:
    """A REST API v2 client logged in as the simple auth manager's admin."""
    return AirflowApi(base, Path(env["AIRFLOW_HOME"]))


def run_dags_test(env: dict[str, str], dag_id: str, conf: dict) -> tuple[bool, str]:
    """`airflow dags test` with a conf: whether the run succeeded, and its log."""
    result = subprocess.run(
        [AIRFLOW, "dags", "test", dag_id, "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    log = result.stdout + result.stderr
    return result.returncode == 0 and "state=failed" not in log, log


def dags_test(env: dict[str, str], dag_id: str, conf: dict) -> str:
    succeeded, log = run_dags_test(env, dag_id, conf)
    assert succeeded, log[-4000:]
    return log


def dags_test_failing(env: dict[str, str], dag_id: str, conf: dict) -> str:
    succeeded, log = run_dags_test(env, dag_id, conf)
    assert not succeeded, log[-4000:]
    return log
