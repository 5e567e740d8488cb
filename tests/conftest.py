"""Shared, session-scoped fixtures: one home folder, one Spark session, one replayed landing zone, the
data-engineering chain on the real demo days and a quickly trained challenger and champion."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flightplan.config import PipelineConfig, load_pipeline
from flightplan.layout import Layout
from flightplan.model import stages
from flightplan.settings import Settings, load_settings
from flightplan.tracking import RunContext

from tests.support.pipeline import END_DAY, FIRST_DAY, QUICK, run_chain, run_data_engineering
from tests.support.processes import mark_session, wait_for_leftovers

SESSION = mark_session()


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
    from flightplan.dev.replay import replay

    return replay(layout, FIRST_DAY, END_DAY)


@pytest.fixture(scope="session")
def good_days(replayed: dict[str, int]) -> dict[str, dict]:
    """The whole chain on the three real days, as the DAG runs it."""
    return run_data_engineering(FIRST_DAY, END_DAY)


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
