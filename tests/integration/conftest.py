"""Fixtures shared by the integration tests: the data-engineering chain on the real demo days."""

from __future__ import annotations

import pytest
from flightplan.model import stages
from flightplan.settings import Settings
from flightplan.tracking import RunContext

from tests.conftest import END_DAY, FIRST_DAY, run_data_engineering


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
