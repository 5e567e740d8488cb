"""Shared, session-scoped fixtures: one home folder, one Spark session, one replayed landing zone."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from flightplan.config import PipelineConfig, load_pipeline
from flightplan.layout import Layout
from flightplan.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
FIRST_DAY, END_DAY = date(2013, 1, 1), date(2013, 1, 4)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
