"""The fixtures every tier shares. Each module works in a home of its own, a copy of one prepared once for the
session (the demo's first days landed and run through data_engineering), and trains its own quick challenger
and champion when it asks for them; one Spark session serves them all."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from flightplan.config import PipelineConfig, load_pipeline
from flightplan.layout import Layout
from flightplan.model import stages
from flightplan.settings import Settings, load_settings
from flightplan.tracking import RunContext

from tests.support.homes import copy_home
from tests.support.pipeline import (
    END_DAY,
    FIRST_DAY,
    QUICK,
    data_engineering_manifests,
    run_chain,
    run_data_engineering,
)
from tests.support.processes import mark_session, wait_for_leftovers
from tests.support.spark_connect import spark_connect_server

SESSION = mark_session()
# The browser and its pages, for the tests that use the web UIs (tests/web, and the Models page of an e2e test).
pytest_plugins = ["tests.support.browser"]


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


@contextmanager
def tracking_kept() -> Iterator[None]:
    """MLflow's tracking URI, and the variable that exports it, as they were at exit. The library points MLflow at
    a store process-wide (mlflow.set_tracking_uri, which also exports MLFLOW_TRACKING_URI, read by load_settings and
    child processes)."""
    import mlflow

    exported, current = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    try:
        yield
    finally:
        mlflow.set_tracking_uri(current)
        if exported is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = exported


@pytest.fixture(scope="module", autouse=True)
def session_tracking_restored() -> Iterator[None]:
    """Each module leaves MLflow pointed where it found it, home or not: a module that reads the registry of its
    own tracking server, stopped at its end, would otherwise leave every later module talking to a closed port."""
    with tracking_kept():
        yield


@dataclass(frozen=True)
class PreparedHome:
    """The home every module's home is copied from, and what its landing zone received."""

    folder: Path
    replayed: dict[str, int]


@contextmanager
def pointed_at(home: Path) -> Iterator[None]:
    """FLIGHTPLAN_HOME set to ``home`` and MLflow pointed at its store; both as they were at exit."""
    import mlflow

    saved = os.environ.get("FLIGHTPLAN_HOME")
    with tracking_kept():
        os.environ["FLIGHTPLAN_HOME"] = str(home)
        # The library exports the store it last used, which load_settings would obey over the home's own.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        mlflow.set_tracking_uri(load_settings().mlflow_tracking_uri)
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("FLIGHTPLAN_HOME", None)
            else:
                os.environ["FLIGHTPLAN_HOME"] = saved


@pytest.fixture(scope="session")
def prepared_home(tmp_path_factory: pytest.TempPathFactory) -> PreparedHome:
    """Three real days of the demo data landed and run through data_engineering, once for the session."""
    from flightplan.dev.replay import replay

    folder = tmp_path_factory.mktemp("flightplan-prepared")
    with pointed_at(folder):
        settings = load_settings()
        counts = replay(Layout(settings, load_pipeline("flights", settings.pipelines_dir)), FIRST_DAY, END_DAY)
        run_data_engineering(FIRST_DAY, END_DAY)
    return PreparedHome(folder, counts)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, prepared_home: PreparedHome) -> Iterator[Path]:
    """The module's own home: a copy of the prepared one. What a module writes (data, models, aliases, the
    prediction log) no other module sees."""
    folder = copy_home(prepared_home.folder, tmp_path_factory.mktemp("flightplan-home"))
    with pointed_at(folder):
        yield folder


@pytest.fixture(scope="module")
def settings(home: Path) -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def config(settings: Settings) -> PipelineConfig:
    return load_pipeline("flights", settings.pipelines_dir)


@pytest.fixture(scope="module")
def layout(settings: Settings, config: PipelineConfig) -> Layout:
    return Layout(settings, config)


@pytest.fixture(scope="session")
def spark(prepared_home: PreparedHome):  # type: ignore[no-untyped-def]
    """The session's Spark, which every module's stages share (its scratch space is the prepared home's)."""
    from flightplan.spark import get_spark

    session = get_spark(load_settings({"FLIGHTPLAN_HOME": str(prepared_home.folder)}), "flightplan-tests")
    yield session
    session.stop()
    # py4j logs at INFO while its connections are collected at exit, after pytest has closed the streams.
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def spark_connect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The session's Spark Connect server (the embedded stack's): the environment that points a process at it.
    The DAGs' tasks of the end-to-end tier connect to it; this process never does."""
    with spark_connect_server(tmp_path_factory.mktemp("spark-connect")) as environment:
        yield environment


@pytest.fixture(scope="module")
def replayed(home: Path, prepared_home: PreparedHome) -> dict[str, int]:
    """Rows per landing file of the three real days in the module's landing zone."""
    return prepared_home.replayed


@pytest.fixture(scope="module")
def good_days(layout: Layout, replayed: dict[str, int]) -> dict[str, dict]:
    """The whole chain's manifests on the three real days, as the module's home holds them."""
    return data_engineering_manifests(layout, FIRST_DAY, END_DAY)


@pytest.fixture(scope="module")
def challenger(good_days: dict) -> tuple[str, dict[str, str]]:
    """A registered challenger (alias `challenger`) of the demo days, quickly tuned."""
    return run_chain(stages.ModelJob("flights", RunContext(dag_id="model_engineering", run_id="it-1"), QUICK))


@pytest.fixture(scope="module")
def champion(challenger: tuple[str, dict[str, str]], settings: Settings) -> str:
    """The quick challenger promoted to `champion`."""
    from flightplan.tracking import client

    version = challenger[1]["version"]
    client(settings).set_registered_model_alias("flights-delayed", "champion", version)
    return version
