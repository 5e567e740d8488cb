"""The embedded stack's defaults are the secure ones: Airflow asks for a login whatever the calling environment
says, nothing listens beyond loopback unless its URL says so, the generated secrets are readable by their owner
only, and the inference API does not start without a token unless told to. (The running stack is checked in
tests/web/test_stack_security.py.)"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from flightplan.dev.airflow_rest import PASSWORDS_FILE, admin_password
from flightplan.dev.stack import (
    COMPONENTS,
    ensure_airflow_password,
    ensure_tokens,
    processes,
    stack_airflow_environment,
)
from flightplan.settings import TOKEN_VARIABLES, api_tokens, load_settings, token_file
from flightplan.spark import connect_token_file

from tests.support.pipeline import REPO
from tests.support.service import free_port

OPEN_AIRFLOW = {
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # every visitor an admin, no login page
}


def test_the_embedded_airflow_asks_for_a_login_whatever_the_environment_says(tmp_path: Path) -> None:
    """Airflow's own configuration reader, in the environment `flightplan up` gives its processes."""
    settings = load_settings({"FLIGHTPLAN_HOME": str(tmp_path)})
    env = {**os.environ, **OPEN_AIRFLOW, **stack_airflow_environment(settings, REPO / "dags", REPO / "plugins")}
    read = "from airflow.configuration import conf; print(conf.get('core', 'auth_manager')); " + (
        "print(conf.getboolean('core', 'simple_auth_manager_all_admins'))"
    )
    answer = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    auth_manager, all_admins = answer.stdout.split()
    assert auth_manager.endswith(".SimpleAuthManager") and all_admins == "False"


def test_the_embedded_stack_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    settings = load_settings({"FLIGHTPLAN_HOME": str(tmp_path)})
    commands = {p.name: p.command for component in COMPONENTS for p in processes(settings, component)}
    assert set(commands) == {
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "mlflow",
        "service",
        "spark-connect",
    }
    assert "spark.connect.grpc.binding.address=127.0.0.1" in commands["spark-connect"]
    for name, command in commands.items():
        if "--host" in command:
            assert command[command.index("--host") + 1] == "127.0.0.1", name
    assert {name for name, command in commands.items() if "--host" in command} == {
        "airflow-api-server",
        "mlflow",
        "service",
    }
    # Left to themselves, these two start Airflow's log server on every interface.
    assert "--skip-serve-logs" in commands["airflow-scheduler"] and "--skip-serve-logs" in commands["airflow-triggerer"]


def test_the_generated_password_and_tokens_are_readable_by_their_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in TOKEN_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    settings = load_settings({"FLIGHTPLAN_HOME": str(tmp_path)})
    ensure_airflow_password(settings)
    ensure_tokens(settings)
    password = admin_password(settings.airflow_home)
    tokens = api_tokens(settings)
    assert len(password) >= 20 and set(tokens) == set(TOKEN_VARIABLES)
    assert all(len(token) >= 40 for token in tokens.values()) and len(set(tokens.values())) == len(tokens)
    generated = (*(token_file(settings, scope) for scope in TOKEN_VARIABLES), connect_token_file(settings))
    for path in (settings.airflow_home / PASSWORDS_FILE, *generated):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    ensure_airflow_password(settings)
    ensure_tokens(settings)
    assert admin_password(settings.airflow_home) == password and api_tokens(settings) == tokens


def test_the_inference_api_does_not_start_without_a_token(tmp_path: Path) -> None:
    """Without FLIGHTPLAN_API_TOKEN, nor a generated token, nor --no-auth: it refuses (a service that started
    instead would still run when the timeout ends the test)."""
    env = {key: value for key, value in os.environ.items() if key != "FLIGHTPLAN_API_TOKEN"}
    env["FLIGHTPLAN_HOME"] = str(tmp_path)
    command = [str(Path(sys.executable).with_name("flightplan")), "serve", "--pipeline", "flights"]
    refused = subprocess.run(
        [*command, "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "FLIGHTPLAN_API_TOKEN" in refused.stderr and "--no-auth" in refused.stderr


AUTH_MANAGER_STARTS = """
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

manager = SimpleAuthManager()
manager.init()
print("users with a password:", sorted(SimpleAuthManager.get_passwords()))
"""


def test_the_compose_api_servers_passwords_come_from_the_environment_and_airflow_prints_none(tmp_path: Path) -> None:
    """`flightplan airflow-passwords` (the compose api-server's first step) writes every user's password owner-only;
    Airflow's own auth manager then starts on that file without generating, or printing, a password."""
    flightplan = str(Path(sys.executable).with_name("flightplan"))
    env = {
        **os.environ,
        "FLIGHTPLAN_HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,ops:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW_PASSWORDS": "admin:first-test-password ops:second-test-password",
    }
    missing = {**env, "AIRFLOW_PASSWORDS": "admin:first-test-password"}
    refused = subprocess.run([flightplan, "airflow-passwords"], env=missing, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "missing for ['ops']" in refused.stderr, refused.stderr
    assert "first-test-password" not in refused.stdout + refused.stderr

    written = subprocess.run([flightplan, "airflow-passwords"], env=env, capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    path = tmp_path / "airflow" / PASSWORDS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert admin_password(tmp_path / "airflow") == "first-test-password"
    assert admin_password(tmp_path / "airflow", "ops") == "second-test-password"

    started = subprocess.run(
        [sys.executable, "-c", AUTH_MANAGER_STARTS], env=env, capture_output=True, text=True, timeout=120
    )
    output = started.stdout + started.stderr
    assert started.returncode == 0, output
    assert "users with a password: ['admin', 'ops']" in output and "Password for user" not in output, output
    assert "test-password" not in output
