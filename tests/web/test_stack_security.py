"""The running embedded stack (`flightplan up`, tests/web's own stack) as an outsider and as its logs see it:
nothing of it listens beyond loopback, Airflow and the inference API refuse a request without a login, and after
a deployment run (its tasks call the service with the token) no log file holds a live secret. No browser."""

from __future__ import annotations

import configparser
import contextlib
import os
from pathlib import Path

import httpx
import psutil
import pytest
from flightplan.dev.airflow_rest import AirflowApi
from flightplan.dev.stack import status
from flightplan.model.registry import CHAMPION, alias_version
from flightplan.settings import Settings
from flightplan.spark import connect_token_file

from tests.support.web import WebStack

pytestmark = pytest.mark.airflow
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# Airflow's secrets, which `airflow db migrate` generated into the stack's airflow.cfg (section, key).
AIRFLOW_SECRETS = (("api_auth", "jwt_secret"), ("api", "secret_key"), ("core", "fernet_key"))


def stack_processes(settings: Settings) -> list[psutil.Process]:
    """Every process of the running stack: the members of the process groups its pid files name (the API
    server's workers, the scheduler's task processes and their Spark JVMs among them)."""
    groups = {pid for pid in status(settings).values() if pid is not None}
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if os.getpgid(process.pid) in groups:
                members.append(process)
    return members


def listening(processes: list[psutil.Process]) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every socket these processes listen on."""
    found = set()
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            for connection in process.net_connections("inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found.add((process.name(), connection.laddr.ip, connection.laddr.port))
    return found


def live_secrets(web: WebStack) -> dict[str, str]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(web.settings.airflow_home / "airflow.cfg")
    secrets = {"inference API token": web.token, "Airflow admin password": web.password}
    secrets["Spark Connect token"] = connect_token_file(web.settings).read_text().strip()
    secrets |= {f"[{section}] {key}": cfg.get(section, key, fallback="") for section, key in AIRFLOW_SECRETS}
    return secrets


def log_files(settings: Settings) -> list[Path]:
    """Every log the stack and its runs wrote: the processes' under <home>/stack/, Airflow's task and
    dag-processor logs, anything else named *.log under either home."""
    roots = {settings.home, settings.airflow_home}
    found = {p for root in roots for p in root.rglob("*.log")}
    found |= {p for p in (settings.airflow_home / "logs").rglob("*") if p.is_file()}
    return sorted(found)


def test_nothing_listens_beyond_loopback_and_every_door_asks_for_a_login(web_stack: WebStack) -> None:
    settings = web_stack.settings
    sockets = listening(stack_processes(settings))
    ports = {port for _, _, port in sockets}
    spark = settings.spark_server.replace("sc://", "http://", 1)
    for url in (spark, settings.airflow_url, settings.mlflow_ui_url, settings.service_url):
        assert httpx.URL(url).port in ports, (url, sockets)  # the census sees the stack's servers
    assert {(name, address, port) for name, address, port in sockets if address not in LOOPBACK} == set()

    assert httpx.get(f"{settings.airflow_url}/api/v2/dags", timeout=30).status_code == 401
    assert httpx.get(f"{settings.airflow_url}/flightplan/", timeout=30).status_code == 401
    predict = f"{settings.service_url}/v1/{web_stack.pipeline}/predict/batch"
    assert httpx.post(predict, json={"records": [{}]}, timeout=30).status_code == 401
    assert httpx.post(f"{settings.service_url}/admin/reload", timeout=30).status_code == 401


def test_no_live_secret_is_in_any_log_after_a_deployment_run(web_stack: WebStack) -> None:
    settings = web_stack.settings
    secrets = live_secrets(web_stack)
    assert all(len(value) >= 12 for value in secrets.values()), {k: len(v) for k, v in secrets.items()}
    version = alias_version(settings, "flights-delayed", CHAMPION)
    api = AirflowApi(settings.airflow_url, settings.airflow_home)
    try:
        api.wait_until_parsed("flights.deployment")
        api.set_paused("flights.deployment", False)
        conf = {"version": version, "reason": "log scan"}
        run_id = api.trigger("flights.deployment", conf)["dag_run_id"]
        state = api.wait_for_run("flights.deployment", run_id, timeout=900)
        tasks = api.task_states("flights.deployment", run_id)
        # The log view of a finished task reads its file: the log servers are off (`--skip-serve-logs`).
        smoke_log = api.task_log("flights.deployment", run_id, "smoke_test")
    finally:
        api.set_paused("flights.deployment", True)  # a challenger the other browser tests register must not be promoted
        api.close()
    assert state == "success" and tasks["reload_service"] == tasks["smoke_test"] == "success", tasks
    assert any(line.startswith("Done. Returned value") for line in smoke_log), smoke_log[-20:]

    files = log_files(settings)
    names = {path.name for path in files}
    assert {"airflow-api-server.log", "airflow-scheduler.log", "service.log"} <= names, names
    assert any("task_id=smoke_test" in str(path) for path in files), files  # the tasks' own logs are read too
    leaks = {
        f"{what} in {path}"
        for path in files
        for what, value in secrets.items()
        if value in path.read_text(errors="replace")
    }
    assert not leaks, leaks
