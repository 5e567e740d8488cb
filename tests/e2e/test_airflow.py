"""data_engineering under a real Airflow: once through `airflow dags test`, once through the scheduler,
the dag-processor and the API server, triggered with a conf over the REST API v2."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flightplan.layout import Layout

from tests.conftest import END_DAY, FIRST_DAY
from tests.e2e.conftest import AIRFLOW, airflow_api, running_airflow

CONF = {"pipeline": "flights", "start": FIRST_DAY.isoformat(), "end": END_DAY.isoformat()}
pytestmark = pytest.mark.airflow


def run_dags_test(env: dict[str, str], dag_id: str, conf: dict) -> tuple[bool, str]:
    """`airflow dags test` with a conf: whether the run succeeded, and its log."""
    result = subprocess.run(
        [AIRFLOW, "dags", "test", dag_id, "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    log = result.stdout + result.stderr
    return result.returncode == 0 and "state=failed" not in log, log


def dags_test(env: dict[str, str], dag_id: str, conf: dict) -> str:
    succeeded, log = run_dags_test(env, dag_id, conf)
    assert succeeded, log[-4000:]
    return log


def dags_test_failing(env: dict[str, str], dag_id: str, conf: dict) -> str:
    succeeded, log = run_dags_test(env, dag_id, conf)
    assert not succeeded, log[-4000:]
    return log


def test_dags_test_runs_the_whole_dag(airflow_env: dict[str, str], layout: Layout, replayed: dict[str, int]) -> None:
    log = dags_test(airflow_env, "data_engineering", CONF)
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

    conf = {"pipeline": "flights", "trials": 3, "reason": "e2e test"}
    log = dags_test(airflow_env, "model_engineering", conf)
    for task in ("features", "tune", "train", "evaluate", "accept", "package", "register"):
        assert f"[DAG TEST] end task task_id={task}" in log
    model = load_alias(layout.settings, "flights-delayed", "challenger")
    assert model is not None
    onnx_model = mlflow.onnx.load_model("models:/flights-delayed@challenger")
    assert onnx_model.SerializeToString() == model.onnx
    rows = np.zeros((2, len(model.feature_map.features)), dtype=np.float32)
    assert package.predict(package.session(model.onnx), rows, "binary").shape == (2,)
    version = mlflow.MlflowClient().get_model_version("flights-delayed", model.version)
    assert version.tags["airflow.dag_id"] == "model_engineering" and version.tags["flightplan.reason"] == "e2e test"


@pytest.fixture(scope="module")
def live_airflow(airflow_env: dict[str, str]) -> Iterator[str]:
    with running_airflow(airflow_env) as base:
        yield base


def test_trigger_through_rest_api_runs_to_success(live_airflow: str, airflow_env: dict[str, str]) -> None:
    api = airflow_api(live_airflow, airflow_env)
    assert api.http.get("/dags/data_engineering").status_code in (200, 404)
    assert httpx.get(f"{live_airflow}/api/v2/dags", timeout=30).status_code == 401

    api.wait_until_parsed("data_engineering")
    api.set_paused("data_engineering", False)
    run_id = api.trigger("data_engineering", CONF)["dag_run_id"]

    state = api.wait_for_run("data_engineering", run_id)
    assert state == "success", api.task_states("data_engineering", run_id)
    assert api.task_states("data_engineering", run_id) == dict.fromkeys(
        ["ingest", "profile", "validate", "wrangle", "label", "split"], "success"
    )
    events = api.http.get(
        "/assets/events", params={"source_dag_id": "data_engineering", "source_run_id": run_id}
    ).json()
    assert [e["extra"]["pipeline"] for e in events["asset_events"]] == ["flights"]


def test_models_page_answers_only_a_logged_in_airflow_user(live_airflow: str, airflow_env: dict[str, str]) -> None:
    """The plugin's pages inside the API server: refused without Airflow's token, shown with it (the latest
    version registered above); a deploy from the page starts a deployment run as that user."""
    from flightplan.model.registry import CHALLENGER, alias_version
    from flightplan.settings import load_settings

    challenger = alias_version(load_settings(), "flights-delayed", CHALLENGER)
    assert httpx.get(f"{live_airflow}/flightplan/", timeout=30).status_code == 401
    assert httpx.get(f"{live_airflow}/flightplan/", cookies={"_token": "forged"}, timeout=30).status_code in (401, 403)
    api = airflow_api(live_airflow, airflow_env)
    page = httpx.get(f"{live_airflow}/flightplan/", headers=api.http.headers, timeout=60)
    assert page.status_code == 200 and f"<b>challenger</b>: version {challenger}" in page.text
    assert "Signed in as admin" in page.text
    plugins = api.http.get("/plugins").json()["plugins"]
    assert any(view["href"] == "flightplan/" for p in plugins for view in p.get("external_views", []))

    api.wait_until_parsed("deployment")
    deployed = httpx.post(
        f"{live_airflow}/flightplan/pipelines/flights/deploy",
        data={"version": challenger, "reason": "e2e"},
        headers=api.http.headers,
        timeout=60,
    )
    assert deployed.status_code == 200, deployed.text
    runs = api.http.get("/dags/deployment/dagRuns").json()["dag_runs"]
    started = [r for r in runs if r["conf"].get("reason", "").startswith("e2e (deployed by admin")]
    assert len(started) == 1 and started[0]["conf"]["version"] == challenger
    assert started[0]["triggering_user_name"] == "admin"
    # The deployment DAG stays paused here; the run is removed so that later tests start from none.
    api.http.delete(f"/dags/deployment/dagRuns/{started[0]['dag_run_id']}").raise_for_status()
