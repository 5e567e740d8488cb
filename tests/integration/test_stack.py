"""`flightplan up` and `flightplan down` on the Spark Connect server, the MLflow UI and the inference service of the
embedded stack (Airflow's part is started by the end-to-end tests through the same module): each runs in the
background, answers its health URL (the server: accepts connections), is reported by `flightplan status`, and is
gone after `down`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from flightplan.settings import Settings

from tests.support.pipeline import REPO
from tests.support.service import free_port, token_environment

FLIGHTPLAN = str(Path(sys.executable).with_name("flightplan"))


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLIGHTPLAN, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_up_starts_the_components_in_the_background_and_down_stops_them(settings: Settings, champion: str) -> None:
    mlflow_url, service_url = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    spark_port = free_port()
    env = {
        **os.environ,
        "FLIGHTPLAN_HOME": str(settings.home),
        "FLIGHTPLAN_SPARK_SERVER": f"sc://localhost:{spark_port}",
        "FLIGHTPLAN_MLFLOW_UI_URL": mlflow_url,
        "FLIGHTPLAN_SERVICE_URL": service_url,
        **token_environment("stack-test-token"),
    }
    started = run(env, "up", "spark", "mlflow", "service")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert httpx.get(f"{mlflow_url}/health", timeout=10).status_code == 200
        socket.create_connection(("127.0.0.1", spark_port), timeout=10).close()
        ready = httpx.get(f"{service_url}/ready", timeout=10).json()
        assert ready["pipelines"]["flights"]["version"] == champion
        status = run(env, "status")
        assert "spark-connect          running" in status.stdout
        assert "mlflow                 running" in status.stdout and "service                running" in status.stdout
        assert status.returncode == 1 and "airflow-scheduler      stopped" in status.stdout  # not all of it runs
        again = run(env, "up", "service")
        assert again.returncode == 0 and again.stdout.count("running (pid") == 3  # nothing started twice
        assert run(env, "up", "spark-cluster").returncode == 1
    finally:
        stopped = run(env, "down", "spark", "mlflow", "service")
    assert "service                stopped (pid" in stopped.stdout, stopped.stdout + stopped.stderr
    assert "spark-connect          stopped (pid" in stopped.stdout
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", spark_port), timeout=2)
    for url in (mlflow_url, service_url):
        try:
            httpx.get(f"{url}/health", timeout=2)
            raise AssertionError(f"{url} still answers after `flightplan down`")
        except httpx.TransportError:
            pass
    assert "mlflow                 stopped" in run(env, "status").stdout
