"""A real Airflow on a temporary AIRFLOW_HOME (SQLite, LocalExecutor), shared by the end-to-end tests."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from flightplan.settings import Settings, airflow_environment

from tests.conftest import REPO

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
