"""Shared, session-scoped fixtures: one home folder, one Spark session, one replayed landing zone, the
data-engineering chain on the real demo days and a quickly trained challenger and champion."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest
from flightplan.config import PipelineConfig, load_pipeline
from flightplan.layout import Layout
from flightplan.model import stages
from flightplan.settings import TOKEN_VARIABLES, ApiScope, Settings, load_settings
from flightplan.tracking import RunContext

from tests.leftover_processes import mark_session, wait_for_leftovers

REPO = Path(__file__).resolve().parents[1]
SESSION = mark_session()
DATASETS = ("curated", "wrangled", "labeled", "quarantine", "splits")
FIRST_DAY, END_DAY = date(2013, 1, 1), date(2013, 1, 4)
# What a client with the inference token could send as a text field, to run as whoever opens a report of it.
SCRIPT_PAYLOAD = '</script><script>alert("xss");document.title="pwned";fetch("/api/v2/dags")</script>'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scoped_tokens(token: str) -> dict[ApiScope, str]:
    """A test's token of each scope of the inference API: ``token`` predicts, the others bear their scope's name."""
    return {"predict": token, "feedback": f"{token}-feedback", "admin": f"{token}-admin"}


def token_environment(token: str) -> dict[str, str]:
    """The variables that give a service, or its clients, the tokens of ``scoped_tokens(token)``."""
    return {TOKEN_VARIABLES[scope]: value for scope, value in scoped_tokens(token).items()}


@contextmanager
def service_process(
    settings: Settings,
    token: str,
    poll_seconds: float,
    wait_ready: bool,
    env: dict[str, str] | None = None,
    pipelines: tuple[str, ...] | None = ("flights",),
) -> Iterator[dict]:
    """`flightplan serve` for ``pipelines`` (None: every pipeline of the folder, followed) as its own process (in
    ``env``, by default this one's), on a free port; stopped at exit."""
    port = free_port()
    env = {**(os.environ if env is None else env), **token_environment(token), "FLIGHTPLAN_HOME": str(settings.home)}
    output = settings.home / f"serve-{port}.log"
    command = [str(Path(sys.executable).with_name("flightplan")), "serve"]
    for pipeline in pipelines or ():
        command += ["--pipeline", pipeline]
    with output.open("w") as sink:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--poll-seconds", str(poll_seconds)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, output.read_text()
        try:
            if httpx.get(f"{url}/ready").status_code == 200 or not wait_ready:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, output.read_text()
        time.sleep(0.5)
    yield {"url": url, "process": process, "output": output}
    if process.poll() is None:
        process.terminate()
        process.wait(30)


def data_digest(data_root: Path, pipeline: str) -> dict[str, tuple[int, int, str]]:
    """Each Parquet folder of the pipeline's datasets: (files, rows, digest of its rows in any order)."""
    digests = {}
    for dataset in DATASETS:
        root = data_root / dataset / pipeline
        for folder in sorted({f.parent for f in root.rglob("*.parquet")}):
            files = sorted(folder.glob("*.parquet"))
            frame = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
            frame = frame[sorted(frame.columns)]
            rows = sorted(pd.util.hash_pandas_object(frame, index=False).tolist())
            digest = hashlib.sha256(str(rows).encode()).hexdigest()
            digests[str(folder.relative_to(data_root))] = (len(files), len(frame), digest)
    return digests


def leftovers(data_root: Path) -> list[str]:
    """Files an interrupted write could leave behind: in staging, Spark's temporary folders, hidden partials."""
    staged = [str(p) for p in (data_root / "_staging").rglob("*") if p.is_file()]
    hidden = [str(p) for p in data_root.rglob(".*") if not p.name.endswith(".crc")]
    temporary = [str(p) for p in data_root.rglob("_temporary")]
    return staged + hidden + temporary


def run_data_engineering(start: date, end: date) -> dict[str, dict]:
    """The data_engineering tasks on [start, end) in this process (its Spark session), in the DAG's order:
    each stage's manifest, or the path of the report it wrote."""
    from flightplan import workflow

    job = workflow.StageInput("flights", start, end)
    manifests = {}
    for stage in (
        workflow.ingest,
        workflow.profile,
        workflow.validate,
        workflow.wrangle,
        workflow.label,
        workflow.split,
    ):
        path = stage(job)
        manifests[stage.__name__] = json.loads(path.read_text()) if path.suffix == ".json" else {"path": str(path)}
    return manifests


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The session ends by checking that no process it started outlives it (a stack's or a scheduler's
    orphans); set up before every other fixture, it is torn down after them all."""
    yield
    stop_spark_gateway()
    found = wait_for_leftovers(SESSION, (tmp_path_factory.getbasetemp().resolve(),))
    if found:
        pytest.fail("processes this session started are still running:\n" + "\n".join(found), pytrace=False)


def stop_spark_gateway() -> None:
    """Ends this process's Spark JVM, which would otherwise live until the interpreter exits: it leaves once the
    pipe to its stdin closes."""
    if "pyspark" not in sys.modules:
        return
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None or getattr(gateway, "proc", None) is None:
        return
    if SparkContext._active_spark_context is not None:
        SparkContext._active_spark_context.stop()
    gateway.shutdown()
    gateway.proc.stdin.close()
    gateway.proc.wait(60)
    SparkContext._gateway = None
    SparkContext._jvm = None


@pytest.fixture(scope="module", autouse=True)
def session_tracking_restored() -> Iterator[None]:
    """Each module leaves MLflow pointed where it found it. The library points MLflow at a store process-wide
    (mlflow.set_tracking_uri, which also exports MLFLOW_TRACKING_URI, read by load_settings and child processes):
    a module that reads the registry of its own tracking server, stopped at its end, would otherwise leave every
    later module talking to a closed port."""
    import mlflow

    exported, current = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(current)
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("flightplan-home")
    previous = os.environ.get("FLIGHTPLAN_HOME")
    os.environ["FLIGHTPLAN_HOME"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("FLIGHTPLAN_HOME")
    else:
        os.environ["FLIGHTPLAN_HOME"] = previous


@pytest.fixture(scope="session")
def settings(home: Path) -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def config(settings: Settings) -> PipelineConfig:
    return load_pipeline("flights", settings.pipelines_dir)


@pytest.fixture(scope="session")
def layout(settings: Settings, config: PipelineConfig) -> Layout:
    return Layout(settings, config)


@pytest.fixture(scope="session")
def spark(settings: Settings):  # type: ignore[no-untyped-def]
    from flightplan.spark import get_spark

    session = get_spark(settings, "flightplan-tests")
    yield session
    session.stop()
    # py4j logs at INFO while its connections are collected at exit, after pytest has closed the streams.
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def replayed(layout: Layout) -> dict[str, int]:
    """Three real days of the demo data in the landing zone."""
    from flightplan.replay import replay

    return replay(layout, FIRST_DAY, END_DAY)


@pytest.fixture(scope="session")
def good_days(replayed: dict[str, int]) -> dict[str, dict]:
    """The whole chain on the three real days, as the DAG runs it."""
    return run_data_engineering(FIRST_DAY, END_DAY)


# Other tests may have left a champion in the shared registry: a quick model is accepted whatever it is.
QUICK = {
    "model.tuning.trials": 3,
    "model.tuning.num_boost_round": 60,
    "model.acceptance.minimum": {},
    "model.acceptance.champion_margin": -1.0,
}
WORSE = {
    **QUICK,
    "model.acceptance.champion_margin": 0.0,
    "model.tuning.num_boost_round": 1,
    "model.tuning.space": {"max_depth": {"type": "int", "low": 1, "high": 1}},
    "model.selection.keep_at_least": 1,
    "model.selection.min_gain_share": 0.99,
    "model.acceptance.maximum": {},
}


def run_chain(job: stages.ModelJob, gate: bool = True) -> tuple[str, dict[str, str]]:
    """The model_engineering tasks in order (without the acceptance gate when ``gate`` is off)."""
    run_id = stages.features(job)
    stages.tune(job, run_id)
    stages.train(job, run_id)
    stages.evaluate(job, run_id)
    if gate:
        stages.accept(job, run_id)
    return run_id, stages.register(job, run_id, stages.package_onnx(job, run_id))


@pytest.fixture(scope="session")
def challenger(good_days: dict) -> tuple[str, dict[str, str]]:
    """A registered challenger (alias `challenger`) of the demo days, quickly tuned."""
    return run_chain(stages.ModelJob("flights", RunContext(dag_id="model_engineering", run_id="it-1"), QUICK))


@pytest.fixture(scope="session")
def champion(challenger: tuple[str, dict[str, str]], settings: Settings) -> str:
    """The quick challenger promoted to `champion`."""
    from flightplan.tracking import client

    version = challenger[1]["version"]
    client(settings).set_registered_model_alias("flights-delayed", "champion", version)
    return version
