"""The end-to-end tests' Airflow: one migrated metadata database for the session (tests/support/airflow.py
starts its processes)."""

from __future__ import annotations

import pytest
from flightplan.settings import Settings

from tests.support.airflow import migrated_airflow


@pytest.fixture(scope="module")
def airflow_env(settings: Settings, replayed: dict[str, int]) -> dict[str, str]:
    return migrated_airflow(settings)
