"""The live gate through a live Airflow (scheduler, triggerer, API server) and a real inference service: runs
triggered through the REST API wait, deferred and holding no worker slot, until the candidate has its labeled
live rows; live traffic and its ground truth come through the service's API. A candidate that wins offline but
loses on live rows (their labels drifted) is refused with the test's numbers; a better one is promoted."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flightplan.dev.airflow_rest import AirflowApi
from flightplan.layout import Layout
from flightplan.settings import Settings

from tests.support.airflow import airflow_api, running_airflow
from tests.support.pipeline import aliases, copy_as_challenger, register_worse_challenger
from tests.support.service import scoped_tokens, service_process, token_environment
from tests.support.web import chart, plotted

TOKEN = "e2e-live-gate-token"
DAG = "flights.deployment"
LIVE_ROWS = 300
pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def live_pipelines(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pipeline, its challenger answering every request in shadow and proven on live rows."""
    pipelines = tmp_path_factory.mktemp("pipelines-with-live-gate")
    shutil.copytree(settings.pipelines_dir, pipelines, dirs_exist_ok=True)
    config = pipelines / "flights.yaml"
    gate = f"  shadow: 1.0\n  live_rows: {LIVE_ROWS}\n  live_poll_seconds: 20\n  live_confidence: 0.95\n"
    config.write_text(config.read_text() + "\ndeployment:\n" + gate)
    return pipelines


@pytest.fixture(scope="module")
def service(settings: Settings, live_pipelines: Path) -> Iterator[str]:
    """A service that loads new versions only when told to (the deployment DAG does)."""
    env = {**os.environ, "FLIGHTPLAN_PIPELINES_DIR": str(live_pipelines)}
    with service_process(settings, TOKEN, poll_seconds=3600, wait_ready=False, env=env) as running:
        yield running["url"]


@pytest.fixture(scope="module")
def live_airflow(airflow_env: dict[str, str], service: str, live_pipelines: Path) -> Iterator[AirflowApi]:
    env = {
        **airflow_env,
        "FLIGHTPLAN_PIPELINES_DIR": str(live_pipelines),
        "FLIGHTPLAN_SERVICE_URL": service,
        **token_environment(TOKEN),
    }
    with running_airflow(env) as base:
        api = airflow_api(base, env)
        api.wait_until_parsed(DAG)
        api.set_paused(DAG, False)
        yield api


def send_live_traffic(service: str, layout: Layout, flipped: bool) -> int:
    """Recent labeled rows through the service (one request of 150, logged as columns, and requests of 10), then
    their true labels through /feedback, each label the opposite of the truth when ``flipped`` (the world changed
    since the data the gate compared offline). Returns the rows sent."""
    from flightplan.deployment.stages import recent_records

    frame, records = recent_records(layout, 400)
    label = layout.config.label.name
    tokens = scoped_tokens(TOKEN)
    ids = []
    with httpx.Client(base_url=service, timeout=60) as http:
        for start, size in [(0, 150), *((at, 10) for at in range(150, len(records), 10))]:
            answer = http.post(
                "/v1/flights/predict/batch",
                json={"records": records[start : start + size]},
                headers={"Authorization": f"Bearer {tokens['predict']}"},
            )
            answer.raise_for_status()
            ids += [each["id"] for each in answer.json()["predictions"]]
        truth = [int(value) for value in frame[label]]
        labels = [{"id": i, "label": 1 - value if flipped else value} for i, value in zip(ids, truth, strict=True)]
        sent = http.post(
            "/v1/flights/feedback", json={"labels": labels}, headers={"Authorization": f"Bearer {tokens['feedback']}"}
        )
        sent.raise_for_status()
    return len(ids)


def waits_deferred_then_decides(
    api: AirflowApi, service: str, layout: Layout, version: str, flipped: bool
) -> tuple[str, str]:
    """Deploys ``version``: while its run waits for live rows, no worker slot is taken (the deferred task counts
    every 20 s); then the rows are sent. Returns the run's id and end state."""
    run_id = api.trigger(DAG, {"version": version, "reason": "live gate e2e"})["dag_run_id"]
    api.wait_for_task(DAG, run_id, "wait_for_live_rows", "deferred")
    pool = api.http.get("/pools/default_pool").json()
    assert (pool["running_slots"], pool["deferred_slots"]) == (0, 1), pool
    challenger = httpx.get(f"{service}/ready").json()["pipelines"]["flights"]["challenger"]
    assert challenger["version"] == version and challenger["shadow"] == 1.0, challenger
    assert send_live_traffic(service, layout, flipped) >= LIVE_ROWS
    return run_id, api.wait_for_run(DAG, run_id, timeout=600)


def live_decision(layout: Layout, run_id: str) -> dict:
    return json.loads((layout.reports("deployment") / f"{run_id}-live.json").read_text())


def test_a_candidate_better_offline_but_worse_live_is_refused_and_a_better_one_promoted(
    live_airflow: AirflowApi, service: str, settings: Settings, layout: Layout, challenger: tuple[str, dict[str, str]]
) -> None:
    from flightplan.tracking import client

    good = challenger[1]["version"]
    worse = register_worse_challenger()
    client(settings).set_registered_model_alias("flights-delayed", "champion", worse)

    refused, state = waits_deferred_then_decides(live_airflow, service, layout, good, flipped=True)
    assert state == "failed" and live_airflow.task_states(DAG, refused)["live_compare"] == "failed"
    decision = live_decision(layout, refused)
    test = decision["test"]
    assert not decision["accepted"] and test["rows"] >= LIVE_ROWS and test["gain"] < 0, decision
    assert f"gain {test['gain']:+.4f}" in decision["reasons"][0] and aliases(settings)["champion"] == worse

    better = copy_as_challenger(settings, good)
    promoted, state = waits_deferred_then_decides(live_airflow, service, layout, better, flipped=False)
    states = live_airflow.task_states(DAG, promoted)
    assert state == "success" and states["smoke_test"] == "success" and states["roll_back"] == "skipped", states
    decision = live_decision(layout, promoted)
    assert decision["accepted"] and decision["test"]["gain"] > 0 and decision["test"]["p_value"] <= 0.05, decision
    assert {k: aliases(settings)[k] for k in ("champion", "previous")} == {"champion": better, "previous": worse}
    assert httpx.get(f"{service}/ready").json()["pipelines"]["flights"]["version"] == better

    experiment = client(settings).get_experiment_by_name("flights-deployment")
    assert experiment is not None
    runs = client(settings).search_runs([experiment.experiment_id], "tags.`flightplan.gate` = 'live'")
    assert {run.data.tags["flightplan.decision"] for run in runs} == {"promote", "refused"}
    assert all(run.data.metrics["live_rows"] >= LIVE_ROWS for run in runs)
    page = httpx.get(
        f"{live_airflow.base_url}/flightplan/", headers={"Authorization": f"Bearer {live_airflow.token}"}, timeout=60
    )
    tests = [live_decision(layout, run)["test"] for run in (refused, promoted)]
    expected = [test[side] for side in ("candidate", "champion") for test in tests]
    assert plotted(chart(page.text, "live-gate")) == pytest.approx(expected, rel=1e-5), page.text[-3000:]
    artifacts = {a.path for a in client(settings).list_artifacts(runs[0].info.run_id)}
    assert any(path.endswith("-live-rows.parquet") for path in artifacts), artifacts
