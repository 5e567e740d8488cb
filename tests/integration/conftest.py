"""Fixtures shared by the integration tests: the data-engineering chain on the real demo days."""

from __future__ import annotations

import json

import pytest
from flightplan import workflow

from tests.conftest import END_DAY, FIRST_DAY


@pytest.fixture(scope="session")
def good_days(replayed: dict[str, int]) -> dict[str, dict]:
    """The whole chain on the three real days, as the DAG runs it."""
    job = workflow.StageInput("flights", FIRST_DAY, END_DAY)
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
