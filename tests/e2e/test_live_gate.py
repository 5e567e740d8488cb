"""The live gate and the watch through a live Airflow (scheduler, triggerer, API server) and a real inference
service: runs triggered through the REST API wait, deferred and holding no worker slot, until the candidate has
its labeled live rows; live traffic and its ground truth come through the service's API. A candidate that wins
offline but loses on live rows (their labels drifted) is refused with the test's numbers; a better one is
promoted, and rolled back by the watch when the live labels then turn against it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
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
    """The demo pipeline, its challenger answering every request in shadow and proven on live rows, and each
    promotion watched for an hour."""
    pipelines = tmp_path_factory.mktemp("pipelines-with-live-gate")
    shutil.copytree(settings.pipelines_dir, pipelines, dirs_exist_ok=True)
    config = pipelines / "flights.yaml"
    gate = (
        f"  shadow: 1.0\n  live_rows: {LIVE_ROWS}\n  live_poll_seconds: 20\n  live_confidence: 0.95\n"
        f"  watch_hours: 1\n  watch_rows: {LIVE_ROWS}\n"
    )
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


def waits_deferred_for_live_rows(api: AirflowApi, service: str, layout: Layout, version: str, flipped: bool) -> str:
    """Deploys ``version``: while its run waits for live rows, no worker slot is taken (the deferred task counts
    every 20 s); then the rows are sent. Returns the run's id."""
    run_id = api.trigger(DAG, {"version": version, "reason": "live gate e2e"})["dag_run_id"]
    api.wait_for_task(DAG, run_id, "wait_for_live_rows", "deferred")
    assert_no_slot_but_a_deferred_one(api)
    challenger = httpx.get(f"{service}/ready").json()["pipelines"]["flights"]["challenger"]
    assert challenger["version"] == version and challenger["shadow"] == 1.0, challenger
    assert send_live_traffic(service, layout, flipped) >= LIVE_ROWS
    return run_id


def assert_no_slot_but_a_deferred_one(api: AirflowApi) -> None:
    pool = api.http.get("/pools/default_pool").json()
    assert (pool["running_slots"], pool["deferred_slots"]) == (0, 1), pool


def decision_file(layout: Layout, run_id: str, gate: str = "live") -> dict:
    from flightplan.deployment.live import live_decision_path

    return json.loads(live_decision_path(layout, run_id, gate).read_text())


def logged(settings: Settings) -> tuple[dict[str, int], int]:
    """Rows answered per version, and answers given in shadow, for the flights pipeline."""
    from datetime import UTC, datetime, timedelta

    from flightplan.prediction_log import answered_versions, create_store_engine, shadow_answers

    now = datetime.now(UTC)
    answered = answered_versions(settings.predictions_db_url, "flights", now - timedelta(days=1), now)
    engine = create_store_engine(settings.predictions_db_url)
    with engine.connect() as connection:
        shadowed = connection.execute(sa.select(sa.func.count()).select_from(shadow_answers)).scalar_one()
    engine.dispose()
    return answered, int(shadowed)


def test_live_gate_refuses_then_promotes_and_the_watch_rolls_a_regression_back(
    live_airflow: AirflowApi, service: str, settings: Settings, layout: Layout, challenger: tuple[str, dict[str, str]]
) -> None:
    from flightplan.tracking import client

    good = challenger[1]["version"]
    worse = register_worse_challenger()
    client(settings).set_registered_model_alias("flights-delayed", "champion", worse)

    # Better offline, worse on live rows whose labels drifted: refused by the live gate, with its numbers.
    refused = waits_deferred_for_live_rows(live_airflow, service, layout, good, flipped=True)
    assert live_airflow.wait_for_run(DAG, refused, timeout=600) == "failed"
    assert live_airflow.task_states(DAG, refused)["live_compare"] == "failed"
    decision = decision_file(layout, refused)
    test = decision["test"]
    assert not decision["accepted"] and test["rows"] >= LIVE_ROWS and test["gain"] < 0, decision
    assert f"gain {test['gain']:+.4f}" in decision["reasons"][0] and aliases(settings)["champion"] == worse

    # Better live too: promoted; then the replaced champion answers in shadow while the watch looks on.
    better = copy_as_challenger(settings, good)
    promoted = waits_deferred_for_live_rows(live_airflow, service, layout, better, flipped=False)
    live_airflow.wait_for_task(DAG, promoted, "watch_champion", "deferred", timeout=600)
    assert_no_slot_but_a_deferred_one(live_airflow)
    decision = decision_file(layout, promoted)
    assert decision["accepted"] and decision["test"]["gain"] > 0 and decision["test"]["p_value"] <= 0.05, decision
    assert {k: aliases(settings)[k] for k in ("champion", "previous", "challenger")} == {
        "champion": better, "previous": worse, "challenger": worse}  # fmt: skip
    ready = httpx.get(f"{service}/ready").json()["pipelines"]["flights"]
    assert (ready["version"], ready["challenger"]["version"]) == (better, worse), ready

    # Live labels turn against the new champion within the watch: it is rolled back, nothing lost from the log.
    assert send_live_traffic(service, layout, flipped=True) >= LIVE_ROWS
    assert live_airflow.wait_for_run(DAG, promoted, timeout=600) == "failed"
    states = live_airflow.task_states(DAG, promoted)
    assert states["smoke_test"] == "success" and states["watch_champion"] == "failed", states
    assert aliases(settings) == {"champion": worse}
    assert httpx.get(f"{service}/ready").json()["pipelines"]["flights"]["version"] == worse
    watch = decision_file(layout, promoted, "watch")
    assert watch["accepted"] and watch["candidate"] == worse and watch["test"]["gain"] > 0, watch
    rolled_back = client(settings).get_model_version("flights-delayed", better).tags["flightplan.rolled_back"]
    assert f"version {worse} did better on live rows" in rolled_back
    # Every answer, the smoke test's (asked of the champion alone) included, and each live one's shadow.
    assert logged(settings) == ({worse: 800, better: 400 + layout.config.deployment.smoke_rows}, 1200)

    experiment = client(settings).get_experiment_by_name("flights-deployment")
    assert experiment is not None
    runs = client(settings).search_runs([experiment.experiment_id], "tags.`flightplan.gate` != ''")
    decided = {(run.data.tags["flightplan.gate"], run.data.tags["flightplan.decision"]) for run in runs}
    assert decided == {("live", "promote"), ("live", "refused"), ("watch", "rolled back")}
    assert all(run.data.metrics["live_rows"] >= LIVE_ROWS for run in runs)
    artifacts = {a.path for a in client(settings).list_artifacts(runs[0].info.run_id)}
    assert any(path.endswith("-rows.parquet") for path in artifacts), artifacts

    page = httpx.get(
        f"{live_airflow.base_url}/flightplan/", headers={"Authorization": f"Bearer {live_airflow.token}"}, timeout=60
    )
    tests = [decision_file(layout, *run)["test"] for run in ((refused,), (promoted,), (promoted, "watch"))]
    expected = [test[side] for side in ("candidate", "champion") for test in tests]
    assert plotted(chart(page.text, "live-gate")) == pytest.approx(expected, rel=1e-5), page.text[-3000:]
    assert "rolled back" in page.text
