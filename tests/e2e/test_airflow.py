"""The DAGs under a real Airflow through `airflow dags test`. (Runs triggered over the REST API v2 and carried out
by the scheduler, and the Models page inside a running API server: tests/e2e/test_engines.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flightplan.layout import Layout

from tests.support.airflow import dags_test
from tests.support.pipeline import END_DAY, FIRST_DAY

CONF = {"start": FIRST_DAY.isoformat(), "end": END_DAY.isoformat()}
pytestmark = pytest.mark.airflow


def test_dags_test_runs_the_whole_dag(airflow_env: dict[str, str], layout: Layout, replayed: dict[str, int]) -> None:
    # fresh: the module's home already holds the split of these days, which the split would otherwise reuse
    log = dags_test(airflow_env, "flights.data_engineering", {**CONF, "fresh": True})
    for task in ("ingest", "profile", "validate", "wrangle", "label", "split"):
        assert f"[DAG TEST] end task task_id={task}" in log
    latest = json.loads((layout.splits / "latest.json").read_text())
    manifest = json.loads(Path(latest["manifest"]).read_text())
    assert manifest["window"] == {"start": CONF["start"], "end": CONF["end"]}


def test_model_engineering_registers_a_challenger_that_loads_by_alias(
    airflow_env: dict[str, str], layout: Layout
) -> None:
    """Runs on the splits the data_engineering test above left, as the asset schedule would."""
    import mlflow
    import numpy as np
    from flightplan.model import package
    from flightplan.model.registry import load_alias

    conf = {"trials": 3, "reason": "e2e test"}
    log = dags_test(airflow_env, "flights.model_engineering", conf)
    for task in ("features", "tune", "train", "evaluate", "accept", "package", "register"):
        assert f"[DAG TEST] end task task_id={task}" in log
    model = load_alias(layout.settings, "flights-delayed", "challenger")
    assert model is not None
    onnx_model = mlflow.onnx.load_model("models:/flights-delayed@challenger")
    assert onnx_model.SerializeToString() == model.onnx
    rows = np.zeros((2, len(model.feature_map.features)), dtype=np.float32)
    assert package.predict(package.session(model.onnx), rows, "binary").shape == (2,)
    version = mlflow.MlflowClient().get_model_version("flights-delayed", model.version)
    assert (
        version.tags["airflow.dag_id"] == "flights.model_engineering"
        and version.tags["flightplan.reason"] == "e2e test"
    )
