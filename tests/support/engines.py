"""The production engines on loopback, started and stopped by the tests that use them: databases on the
machine's PostgreSQL, an MLflow tracking server, and a Spark standalone cluster started with the scripts that
ship inside pyspark (through the project's ``include/docker/spark-node.sh``, as the compose stack runs them). An
engine that is absent skips its tests on a workstation and fails them in CI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from flightplan.settings import Settings

from tests.support.pipeline import REPO
from tests.support.service import free_port

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"


def require(engine: str, problem: str | None) -> None:
    """Skip (outside CI) or fail (in CI, which must have every engine) when ``problem`` says one is missing."""
    if problem is None:
        return
    message = f"{engine} is not available: {problem}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must provide it)")
    pytest.skip(message)


def postgres_problem() -> str | None:
    import psycopg

    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as err:
        return f"PostgreSQL on 127.0.0.1:5432 refused the connection ({err})"
    return None


def redis_database() -> str:
    """A Redis database of this test process, emptied first (runs on one machine rarely share one of the 16)."""
    import redis

    number = 1 + os.getpid() % 15
    redis.Redis(host="127.0.0.1", port=6379, db=number).flushdb()
    return f"redis://127.0.0.1:6379/{number}"


def redis_problem() -> str | None:
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()
    except redis.RedisError as err:
        return f"Redis on 127.0.0.1:6379 did not answer ({err})"
    return None


@contextmanager
def postgres_database(purpose: str) -> Iterator[str]:
    """A new, empty database of this test process (another run on the machine has its own); yields its
    SQLAlchemy URL and drops it at exit."""
    import psycopg

    name = f"flightplan_test_{os.getpid()}_{purpose}"

    def run(statement: str) -> None:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
            connection.execute(statement)

    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    run(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def background(command: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in its own process group, output to ``log``; the whole group is stopped at exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        with contextlib.suppress(ProcessLookupError):  # what outlived the grace period, or its leader
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def wait_until(ready: Callable[[], bool], what: str, log: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while not ready():
        assert process.poll() is None, f"{what} exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not ready after 180 s:\n{log.read_text()[-3000:]}"
        time.sleep(1)


def answers(url: str, check: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return check(httpx.get(url, timeout=5))
        except httpx.TransportError:
            return False

    return ready


@contextmanager
def mlflow_server(backend_store: str, artifacts: Path, log: Path) -> Iterator[str]:
    """`mlflow server` with ``backend_store`` as its tracking and registry store, proxying the artifacts it keeps
    under ``artifacts``; yields its URL."""
    url = f"http://127.0.0.1:{free_port()}"
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend_store]
    command += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    with background([*command, "--workers", "1"], log, dict(os.environ)) as process:
        wait_until(answers(f"{url}/health"), "the MLflow tracking server", log, process)
        yield url


@dataclass(frozen=True)
class SparkCluster:
    master: str  # spark://host:port, what FLIGHTPLAN_SPARK_MASTER points at
    ui: str  # the master's web UI, whose /json/ lists workers and applications
    work_dirs: list[Path]  # one per worker: each application's executor logs land there

    def status(self) -> dict:
        return dict(httpx.get(f"{self.ui}/json/", timeout=10).json())


@contextmanager
def spark_cluster(folder: Path, workers: int, cores: int = 1, memory: str = "2g") -> Iterator[SparkCluster]:
    """A standalone master and ``workers`` workers on loopback, run by this interpreter's pyspark."""
    node = str(REPO / "include" / "docker" / "spark-node.sh")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "SPARK_LOCAL_IP": "127.0.0.1"}
    port, ui_port = free_port(), free_port()
    cluster = SparkCluster(
        f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}", [folder / f"worker-{i}" for i in range(workers)]
    )
    master = [node, "master", "--host", "127.0.0.1", "--port", str(port)]
    with ExitStack() as stack:
        log = folder / "master.log"
        process = stack.enter_context(background([*master, "--webui-port", str(ui_port)], log, env))
        wait_until(answers(f"{cluster.ui}/json/"), "the Spark master", log, process)
        for work_dir in cluster.work_dirs:
            worker = [node, "worker", "--cores", str(cores), "--memory", memory]
            worker += ["--webui-port", "0", "--work-dir", str(work_dir), cluster.master]
            stack.enter_context(background(worker, folder / f"{work_dir.name}.log", env))
        wait_until(
            answers(f"{cluster.ui}/json/", lambda r: r.json().get("aliveworkers") == workers),
            f"{workers} Spark workers",
            log,
            process,
        )
        yield cluster


def pipelines_with(settings: Settings, folder: Path, model: dict[str, Any]) -> Path:
    """The flights pipeline with ``model`` settings and a small search (the data is a few days)."""
    config = yaml.safe_load((settings.pipelines_dir / "flights.yaml").read_text())
    config["model"].update(model)
    config["model"]["tuning"].update({"trials": 2, "num_boost_round": 40})
    config["model"]["acceptance"].update({"minimum": {}, "maximum": {}})
    (folder / "flights.yaml").write_text(yaml.safe_dump(config))
    return folder


class TrackingServer:
    """`mlflow server` on a fixed port and a SQLite store, which a test can stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [str(Path(sys.executable).with_name("mlflow")), "server", "--workers", "1"]
        command += ["--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        command += ["--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1]]
        log = self.folder / "server.log"
        with log.open("ab") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(answers(f"{self.url}/health"), "the MLflow tracking server", log, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
