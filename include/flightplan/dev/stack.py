"""The embedded stack behind `flightplan up` and `make demo`: Airflow (API server, scheduler, dag-processor,
triggerer; LocalExecutor), the MLflow UI and the inference service, each a background process with its pid
file and log under ``<home>/stack/``.

Airflow's metadata database is SQLite under the home folder unless ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``
names another; the MLflow UI is started only when tracking is local (an ``http`` tracking URI is a server
someone else runs). Starting what already runs does nothing; stopping sends SIGTERM to the component's
process group (the scheduler's task processes, the API server's workers) and SIGKILL after a grace period;
what is left of the group of a process that died before it (a killed scheduler's workers) is stopped with it."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from flightplan.dev.airflow_rest import ADMIN, PASSWORDS_FILE
from flightplan.files import replace_atomically
from flightplan.secrets import user_passwords, write_owner_only
from flightplan.settings import TOKEN_VARIABLES, Settings, airflow_environment, api_token, token_file

log = logging.getLogger(__name__)
AIRFLOW_PROCESSES = ("api-server", "scheduler", "dag-processor", "triggerer")
COMPONENTS = ("spark", "airflow", "mlflow", "service")
SPARK_CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


class StackError(RuntimeError):
    """A component did not start; the message names it and ends with the tail of its log."""


@dataclass(frozen=True)
class Process:
    name: str  # the pid and log file names under <home>/stack/
    command: list[str]
    health_url: str | None  # answers 200 once the process serves (tcp://: accepts connections); None: alive is enough
    environment: dict[str, str] = field(default_factory=dict)  # its own, over the stack's
    # Variables of its environment read from files when it starts (where `ps` does not show them): it does not
    # start without them.
    secret_files: dict[str, Path] = field(default_factory=dict)


def _bin(name: str) -> str:
    """A console script of this environment, also when its folder is not on PATH."""
    return str(Path(sys.executable).with_name(name))


def _port(url: str) -> str:
    return str(httpx.URL(url).port or 80)


def _listen(url: str) -> list[str]:
    """The host and port options of a server that answers at ``url`` (loopback by default: nothing of the
    embedded stack listens on other interfaces unless its URL says so)."""
    return ["--host", httpx.URL(url).host, "--port", _port(url)]


def stack_dir(settings: Settings) -> Path:
    return settings.home / "stack"


def stack_airflow_environment(settings: Settings, dags_folder: Path, plugins_folder: Path) -> dict[str, str]:
    """The embedded Airflow's environment, plus what its live services need: the API port its task
    processes report to, and the login of the simple auth manager (on, whatever the calling environment
    says: these values win over it). (The inference API's token stays in its file, readable by its owner
    only, where the service and the tasks read it: not in every environment.)"""
    return {
        **airflow_environment(settings, dags_folder, plugins_folder),
        **airflow_api_environment(settings.airflow_url),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "FLIGHTPLAN_PIPELINES_DIR": str(settings.pipelines_dir),
        "FLIGHTPLAN_SPARK_REMOTE": settings.spark_remote or settings.spark_server,
        "FLIGHTPLAN_SERVICE_URL": settings.service_url,
        "FLIGHTPLAN_MLFLOW_UI_URL": settings.mlflow_ui_url,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
    }


def airflow_api_environment(url: str) -> dict[str, str]:
    """Where Airflow's API server listens, and where its task processes report to it."""
    return {
        "AIRFLOW__API__PORT": _port(url),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url.rstrip('/')}/execution/",
    }


def spark_connect_server(settings: Settings) -> list[Process]:
    """The stack's Spark Connect server, which its tasks connect to instead of each starting a Spark (none when
    ``FLIGHTPLAN_SPARK_REMOTE`` names a server someone else runs, or asks for none). It listens on loopback only,
    and serves only clients with its token: a client's Python functions run as this user."""
    if settings.spark_remote is not None:
        return []
    from flightplan.spark import connect_token_file, driver_configs, session_configs, worker_environment

    pyspark = importlib.util.find_spec("pyspark")
    assert pyspark is not None and pyspark.origin is not None, "pyspark is a dependency of flightplan"
    spark_home = os.environ.get("SPARK_HOME") or str(Path(pyspark.origin).parent)
    server = httpx.URL(settings.spark_server.replace("sc://", "http://", 1))
    if server.host != "localhost":
        raise StackError(
            f"FLIGHTPLAN_SPARK_SERVER={settings.spark_server}: the embedded server's host must be 'localhost', the one "
            "name Spark's client sends the server's token to without TLS"
        )
    port = str(server.port or 15002)
    configs = {
        **driver_configs(settings),
        **session_configs(),  # the defaults of every client's session
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": port,
        # The jobs of a task that was killed stop within about a minute rather than the default 5 (their writes
        # are never published: data.partitions.staging_area).
        "spark.connect.execute.manager.detachedTimeout": "30s",
        "spark.connect.execute.manager.maintenanceInterval": "10s",
    }
    command = [f"{spark_home}/bin/spark-submit", "--class", SPARK_CONNECT_SERVER_CLASS, "--name", "flightplan"]
    command += [option for key, value in configs.items() for option in ("--conf", f"{key}={value}")]
    environment = {**worker_environment(), "SPARK_HOME": spark_home}
    token = {"SPARK_CONNECT_AUTHENTICATE_TOKEN": connect_token_file(settings)}  # the server reads it from there
    return [Process("spark-connect", command, f"tcp://127.0.0.1:{port}", environment, token)]


def processes(settings: Settings, component: str) -> list[Process]:
    if component == "spark":
        return spark_connect_server(settings)
    if component == "airflow":
        health = f"{settings.airflow_url}/api/v2/monitor/health"
        options = {
            "api-server": _listen(settings.airflow_url),
            # Every process runs on this machine, where the API server reads the task logs from their files:
            # Airflow's log server, which would listen on every interface (it has no host option), is not needed.
            "scheduler": ["--skip-serve-logs"],
            "triggerer": ["--skip-serve-logs"],
        }
        return [
            Process(
                f"airflow-{name}",
                [_bin("airflow"), name, *options.get(name, [])],
                health if name == "api-server" else None,
            )
            for name in AIRFLOW_PROCESSES
        ]
    if component == "mlflow":
        if not settings.tracks_locally:
            return []
        command = [
            _bin("mlflow"),
            "server",
            "--backend-store-uri",
            settings.mlflow_tracking_uri,
            *(["--default-artifact-root", root] if (root := settings.mlflow_artifact_root) else []),
            *_listen(settings.mlflow_ui_url),
            "--workers",
            "1",  # a UI for one person: four workers (the default) take 40 s to start on 2 cores
        ]
        return [Process("mlflow", command, f"{settings.mlflow_ui_url}/health")]
    if component == "service":
        # No --pipeline: the service follows the pipelines folder, so a new YAML is served without a restart.
        command = [sys.executable, "-m", "flightplan.cli", "serve", *_listen(settings.service_url)]
        return [Process("service", command, f"{settings.service_url}/health")]
    raise StackError(f"unknown component '{component}' (known: {', '.join(COMPONENTS)})")


def _started_at(pid: int) -> str | None:
    """When a process started, in clock ticks since boot (Linux's /proc; None where there is none), so that a
    pid file left from before a reboot cannot name a stranger that got the same pid."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # a child of this process that has ended: reaped now
            return False
    except ChildProcessError:
        pass  # not a child of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid_file(settings: Settings, name: str) -> tuple[int, str] | None:
    """The pid and start time a pid file holds (None: no file, or not one this module wrote whole)."""
    pid_file = stack_dir(settings) / f"{name}.pid"
    try:
        pid_text, _, started = pid_file.read_text().partition(" ")
        return int(pid_text), started.strip()
    except (OSError, ValueError):
        return None


def running_pid(settings: Settings, name: str) -> int | None:
    """The pid of a stack process that is still alive (its pid file is stale otherwise)."""
    found = _pid_file(settings, name)
    if found is None:
        return None
    pid, started = found
    if not _alive(pid) or (started and _started_at(pid) not in (None, started)):
        return None
    return pid


def ensure_tokens(settings: Settings) -> None:
    """Generates the inference API's bearer token of each scope, and the stack's Spark Connect server's, once."""
    from flightplan.spark import connect_token_file

    for scope in TOKEN_VARIABLES:
        if api_token(settings, scope) is None:
            write_owner_only(token_file(settings, scope), secrets.token_urlsafe(32))
    if settings.spark_remote is None and not connect_token_file(settings).exists():
        write_owner_only(connect_token_file(settings), secrets.token_urlsafe(32))


def ensure_airflow_password(settings: Settings) -> None:
    """Generates the Airflow admin's password once, in the file where the simple auth manager looks for it.
    Left to itself, the auth manager would print a password it generates into the API server's log, and
    keep it in a file every local user can read."""
    path = settings.airflow_home / PASSWORDS_FILE
    if not path.exists():
        write_owner_only(path, json.dumps({ADMIN: secrets.token_urlsafe(16)}))


def write_airflow_passwords(path: Path, users: list[str], pairs: str) -> None:
    """Writes the simple auth manager's passwords file from ``pairs`` (`user:password`, separated by spaces), one
    password for each of ``users``, readable by its owner only, replacing an earlier file whole. The auth manager
    then finds every user's password and generates (and prints into its log) none."""
    passwords = user_passwords(pairs)
    empty = sorted(user for user, password in passwords.items() if not password)
    missing = sorted(set(users) - passwords.keys())
    if missing or empty or not users:
        raise StackError(
            f"AIRFLOW_PASSWORDS must give each Airflow user a password as user:password pairs separated by spaces: "
            f"missing for {missing or empty or 'every user (no user is configured)'}"
        )
    document = json.dumps({user: passwords[user] for user in users})
    replace_atomically(path, lambda partial: write_owner_only(partial, document))


def launch(settings: Settings, process: Process, env: dict[str, str]) -> int:
    """Starts ``process`` in its own session unless it runs already; returns its pid."""
    folder = stack_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    running = running_pid(settings, process.name)
    if running is not None:
        return running
    if process.health_url is not None and _answers(process.health_url):
        # It would fail to listen, and the other's answers would pass for its own.
        raise StackError(f"{process.name}: something else already answers {process.health_url}; stop it or move one")
    secret_values = {
        name: path.read_text().strip() if path.is_file() else "" for name, path in process.secret_files.items()
    }
    missing = [str(process.secret_files[name]) for name, value in secret_values.items() if not value]
    if missing:
        raise StackError(f"{process.name}: {', '.join(missing)} missing or empty (`flightplan up` writes it)")
    _remember_orphans(settings, process.name)
    with (folder / f"{process.name}.log").open("a") as log_file:
        child = subprocess.Popen(
            process.command,
            env={**env, **process.environment, **secret_values},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    partial = folder / f".{process.name}.pid.partial"
    partial.write_text(f"{child.pid} {_started_at(child.pid) or ''}".strip())
    partial.replace(folder / f"{process.name}.pid")
    return child.pid


def _remember_orphans(settings: Settings, name: str) -> None:
    """Notes the group that the previous ``name`` led when its leader has died (killed, or crashed) while members
    live on: a LocalExecutor scheduler's workers, which ignore SIGTERM and wait forever on a queue only their dead
    scheduler fed, and the tasks they still run. Those tasks may finish; `stop` ends the group with the stack."""
    found = _pid_file(settings, name)
    if found is not None and not _alive(found[0]) and _group_alive(found[0]):
        log.warning("%s (pid %d) died, its group lives on: it is stopped with %s", name, found[0], name)
        with _orphans_file(settings, name).open("a") as out:
            out.write(f"{found[0]}\n")


def _orphans_file(settings: Settings, name: str) -> Path:
    return stack_dir(settings) / f"{name}.orphans"


def _orphan_groups(settings: Settings, name: str) -> list[int]:
    """The groups noted for ``name`` that still have a member of this stack: a group's number, free again once
    its last member is gone, could since lead a stranger's group."""
    try:
        groups = [int(line) for line in _orphans_file(settings, name).read_text().split()]
    except (OSError, ValueError):
        return []
    return [group for group in groups if any(_of_this_stack(pid, settings) for pid in _members(group))]


def _members(group: int) -> list[int]:
    members = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # ended meanwhile
            if os.getpgid(int(proc.name)) == group:
                members.append(int(proc.name))
    return members


def _of_this_stack(pid: int, settings: Settings) -> bool:
    """Whether a process was started by this stack: its output goes to a log of the stack's folder (what
    `launch` gives each process, and its children inherit), or its environment names this home. Either alone
    can be missing: a process may close or move its output, and one that sets its title (setproctitle, as
    Airflow's executor workers do) overwrites what /proc shows of its environment."""
    logs = stack_dir(settings).resolve()
    with contextlib.suppress(OSError):
        for fd in (1, 2):
            if Path(os.readlink(f"/proc/{pid}/fd/{fd}")).is_relative_to(logs):
                return True
    with contextlib.suppress(OSError):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return f"FLIGHTPLAN_HOME={settings.home}".encode() in environ
    return False


def wait_ready(settings: Settings, started: list[Process], timeout: float = 240) -> None:
    """Waits until every process with a health URL answers it; raises StackError naming the first that
    exits or does not answer in time."""
    waiting = [process for process in started if process.health_url is not None]
    deadline = time.monotonic() + timeout
    while waiting:
        process = waiting[0]
        log_path = stack_dir(settings) / f"{process.name}.log"
        if running_pid(settings, process.name) is None:
            raise StackError(f"{process.name} exited; {log_path}:\n{_tail(log_path)}")
        if _answers(str(process.health_url)):
            waiting.pop(0)
            continue
        if time.monotonic() > deadline:
            raise StackError(
                f"{process.name} did not answer {process.health_url} in {timeout:.0f} s:\n{_tail(log_path)}"
            )
        time.sleep(0.5)


def _answers(url: str) -> bool:
    parsed = httpx.URL(url)
    if parsed.scheme == "tcp":
        with socket.socket() as probe:
            probe.settimeout(2)
            return probe.connect_ex((parsed.host, parsed.port or 0)) == 0
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _tail(path: Path, characters: int = 3000) -> str:
    return path.read_text(errors="replace")[-characters:]


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(group, signum)


def stop(settings: Settings, name: str, grace_seconds: float = 30) -> int | None:
    """Stops a stack process and every process of its group (it leads one: the scheduler's task processes,
    the API server's workers), SIGKILL for what is left after the grace period; returns the leader's pid, or
    None when nothing of it was running. The group is stopped also when its leader has died: Linux does
    not give a group's number to a new process while a member of the group lives."""
    found = _pid_file(settings, name)
    stopped = None
    groups = _orphan_groups(settings, name)
    if found is not None:
        group, started = found
        leader_alive = _alive(group)
        reused = leader_alive and bool(started) and _started_at(group) not in (None, started)
        if not reused and _group_alive(group):
            stopped = group
            groups.append(group)
    for group in groups:
        _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while any(_alive(group) or _group_alive(group) for group in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    for group in groups:
        _signal_group(group, signal.SIGKILL)
    (stack_dir(settings) / f"{name}.pid").unlink(missing_ok=True)
    _orphans_file(settings, name).unlink(missing_ok=True)
    return stopped


def migrate_airflow(settings: Settings, env: dict[str, str]) -> None:
    """Creates or upgrades the Airflow metadata database (and, the first time, ``airflow.cfg`` with its
    generated secrets, which every Airflow process then shares)."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    log_path = stack_dir(settings) / "airflow-db-migrate.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:
        done = subprocess.run([_bin("airflow"), "db", "migrate"], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise StackError(f"airflow db migrate failed; {log_path}:\n{_tail(log_path)}")


def prepare_tracking(settings: Settings) -> None:
    """Creates or upgrades a local MLflow store before the processes that use it start together: two of them
    migrating a new SQLite store at once fail ("duplicate column name")."""
    from flightplan.tracking import client

    if settings.tracks_locally:
        client(settings).search_experiments(max_results=1)


def _chosen(components: list[str] | None) -> list[str]:
    unknown = sorted(set(components or []) - set(COMPONENTS))
    if unknown:
        raise StackError(f"unknown components {unknown} (known: {', '.join(COMPONENTS)})")
    return list(components or COMPONENTS)


def up(
    settings: Settings, dags_folder: Path, plugins_folder: Path, components: list[str] | None = None
) -> dict[str, int]:
    """Starts the components asked for (all by default); returns the pid of each process."""
    chosen = _chosen(components)
    ensure_tokens(settings)
    env = {**os.environ, **stack_airflow_environment(settings, dags_folder, plugins_folder)}
    if "airflow" in chosen:
        migrate_airflow(settings, env)
        ensure_airflow_password(settings)
    prepare_tracking(settings)
    started = [process for component in COMPONENTS if component in chosen for process in processes(settings, component)]
    pids = {process.name: launch(settings, process, env) for process in started}
    wait_ready(settings, started)
    return pids


def down(settings: Settings, components: list[str] | None = None) -> dict[str, int | None]:
    """Stops the components asked for (all by default), the service first so that in-flight requests are
    answered and logged while the rest still runs; returns the pid each had (None: was not running)."""
    chosen = _chosen(components)
    stopped = {}
    for component in reversed(COMPONENTS):
        if component in chosen:
            # Airflow's API server last: the tasks the scheduler stops report their end through it.
            for process in reversed(processes(settings, component)):
                stopped[process.name] = stop(settings, process.name)
    return stopped


def status(settings: Settings) -> dict[str, int | None]:
    return {
        process.name: running_pid(settings, process.name)
        for component in COMPONENTS
        for process in processes(settings, component)
    }
