"""The end-to-end tests' Airflow: one migrated metadata database for the session (tests/support/airflow.py
starts its processes), whose tasks connect to the session's Spark Connect server."""

from __future__ import annotations

import pytest
from flightplan.settings import Settings

from tests.support.airflow import migrated_airflow


@pytest.fixture(scope="module")
def airflow_env(settings: Settings, replayed: dict[str, int], spark_connect: dict[str, str]) -> dict[str, str]:
    return migrated_airflow(settings, **spark_connect)
