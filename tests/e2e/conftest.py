"""A real Airflow on a temporary AIRFLOW_HOME (SQLite, LocalExecutor), shared by the end-to-end tests."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from flightplan.settings import Settings, airflow_environment

from tests.conftest import REPO, free_port

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="session")
def airflow_env(settings: Settings, replayed: dict[str, int]) -> dict[str, str]:
    env = {
        **os.environ,
        **airflow_environment(settings, REPO / "dags", REPO / "plugins"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        # Only the runs a test triggers: no run for yesterday's interval appears when a DAG is unpaused.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    }
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    return env


@contextmanager
def running_airflow(env: dict[str, str], logs: Path) -> Iterator[str]:
    """The API server, the scheduler and the dag-processor on a free port; yields the base URL once the API
    answers, stops them all at exit."""
    port = free_port()
    env = {
        **env,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
    }
    processes = [
        subprocess.Popen(
            [AIRFLOW, *command], env=env, stdout=(logs / f"{command[0]}.log").open("w"), stderr=subprocess.STDOUT
        )
        for command in (["api-server", "--port", str(port)], ["scheduler"], ["dag-processor"])
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        else:
            raise RuntimeError(f"the API server did not come up; see {logs}")
        yield base
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


class RetryingTransport(httpx.HTTPTransport):
    """Retries a server error: on SQLite, an API write can time out on the database lock (5 s) while the
    scheduler and the tasks write, and nothing of it is committed; a real client retries such a request."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(4):
            response = super().handle_request(request)
            if response.status_code < 500:
                return response
            response.read()
            response.close()
            time.sleep(2)
        return super().handle_request(request)


def airflow_api(base: str, env: dict[str, str]) -> httpx.Client:
    """A REST API v2 client logged in as the simple auth manager's admin."""
    password_file = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    password = json.loads(password_file.read_text())["admin"]
    token = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30)
    token.raise_for_status()
    return httpx.Client(
        base_url=f"{base}/api/v2",
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        timeout=30,
        transport=RetryingTransport(),
    )


def wait_until_parsed(api: httpx.Client, dag_id: str) -> None:
    deadline = time.monotonic() + 180
    while api.get(f"/dags/{dag_id}").status_code != 200:
        assert time.monotonic() < deadline, f"the dag-processor never parsed {dag_id}"
        time.sleep(3)


def wait_for_run(api: httpx.Client, dag_id: str, run_id: str) -> str:
    """The run's final state (or its state after 15 minutes)."""
    deadline = time.monotonic() + 900
    state = "queued"
    while state not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(5)
        state = api.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
    return state


def task_states(api: httpx.Client, dag_id: str, run_id: str) -> dict[str, str | None]:
    found = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    return {t["task_id"]: t["state"] for t in found}


def wait_for_task(api: httpx.Client, dag_id: str, run_id: str, task_id: str, state: str) -> None:
    deadline = time.monotonic() + 600
    while (states := task_states(api, dag_id, run_id)).get(task_id) != state:
        assert time.monotonic() < deadline, f"{task_id} never reached {state}: {states}"
        time.sleep(3)
