"""The live gate and the watch through a live Airflow (scheduler, triggerer, API server) and a real inference
service: runs triggered through the REST API wait, deferred and holding no worker slot, until the candidate has
its labeled live rows; live traffic and its ground truth come through the service's API. A candidate that wins
offline but loses on live rows (their labels drifted) is refused with the test's numbers; a better one is
promoted, and rolled back by the watch when the live labels then turn against it. A watch ends early when a new
model takes the challenger alias, and keeps a champion that holds on its live rows until its time is over. The
Models page, opened in a browser, plots each decision's numbers. Each scenario starts from the worse model made
champion by hand, so that the tests pass alone and in any order."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from flightplan.dev.airflow_rest import AirflowApi, admin_password
from flightplan.layout import Layout
from flightplan.settings import Settings
from playwright.sync_api import Page, expect

from tests.support.airflow import airflow_api, running_airflow
from tests.support.browser import screenshots_folder, shot, sign_in
from tests.support.pipeline import aliases, copy_as_challenger, register_worse_challenger
from tests.support.service import scoped_tokens, service_process, token_environment

TOKEN = "e2e-live-gate-token"
DAG = "flights.deployment"
LIVE_ROWS = 300
WATCH_HOURS = 0.05
pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def live_pipelines(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pipeline, its challenger answering every request in shadow and proven on live rows, and each
    promotion watched for three minutes."""
    pipelines = tmp_path_factory.mktemp("pipelines-with-live-gate")
    shutil.copytree(settings.pipelines_dir, pipelines, dirs_exist_ok=True)
    config = pipelines / "flights.yaml"
    gate = (
        f"  shadow: 1.0\n  live_rows: {LIVE_ROWS}\n  live_poll_seconds: 20\n  live_confidence: 0.95\n"
        f"  watch_hours: {WATCH_HOURS}\n  watch_rows: {LIVE_ROWS}\n"
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


def make_champion(settings: Settings, version: str) -> None:
    """``version`` made the champion by hand, with no challenger: where each scenario starts."""
    from flightplan.tracking import client

    client(settings).set_registered_model_alias("flights-delayed", "champion", version)
    if "challenger" in aliases(settings):
        client(settings).delete_registered_model_alias("flights-delayed", "challenger")


@pytest.fixture(scope="module")
def worse() -> str:
    """A model worse offline than the quick challenger: the champion each scenario starts from."""
    return register_worse_challenger()


@pytest.fixture(scope="module")
def refused(
    live_airflow: AirflowApi, service: str, settings: Settings, layout: Layout, challenger: tuple[str, dict[str, str]],
    worse: str,
) -> str:  # fmt: skip
    """The run of a candidate better offline than the worse champion, but worse on live rows whose labels
    drifted: refused by the live gate."""
    make_champion(settings, worse)
    run_id = waits_deferred_for_live_rows(live_airflow, service, layout, challenger[1]["version"], flipped=True)
    assert live_airflow.wait_for_run(DAG, run_id, timeout=600) == "failed"
    return run_id


def test_live_gate_refuses_then_promotes_and_the_watch_rolls_a_regression_back(
    live_airflow: AirflowApi,
    service: str,
    settings: Settings,
    layout: Layout,
    challenger: tuple[str, dict[str, str]],
    worse: str,
    refused: str,
) -> None:
    from flightplan.tracking import client

    # Refused with its numbers, in the task, the decision and MLflow.
    assert live_airflow.task_states(DAG, refused)["live_compare"] == "failed"
    decision = decision_file(layout, refused)
    test = decision["test"]
    assert not decision["accepted"] and test["rows"] >= LIVE_ROWS and test["gain"] < 0, decision
    assert f"gain {test['gain']:+.4f}" in decision["reasons"][0]

    # Better live too: promoted; then the replaced champion answers in shadow while the watch looks on.
    make_champion(settings, worse)
    answered, shadowed = logged(settings)
    better = copy_as_challenger(settings, challenger[1]["version"])
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
    # Every answer, the smoke test's (asked of the champion alone) included, and each live one's shadow: the worse
    # model answered the 400 rows before the promotion, the better one those after, each with the other in shadow.
    now_answered, now_shadowed = logged(settings)
    smoke_rows = layout.config.deployment.smoke_rows
    assert (now_answered[worse] - answered[worse], now_answered[better]) == (400, 400 + smoke_rows), now_answered
    assert now_shadowed - shadowed == 800

    experiment = client(settings).get_experiment_by_name("flights-deployment")
    assert experiment is not None
    runs = [
        run
        for run in client(settings).search_runs([experiment.experiment_id], "tags.`flightplan.gate` != ''")
        if run.data.tags.get("airflow.run_id") in (refused, promoted)
    ]
    decided = {(run.data.tags["flightplan.gate"], run.data.tags["flightplan.decision"]) for run in runs}
    assert decided == {("live", "promote"), ("live", "refused"), ("watch", "rolled back")}
    assert all(run.data.metrics["live_rows"] >= LIVE_ROWS for run in runs)
    artifacts = {a.path for a in client(settings).list_artifacts(runs[0].info.run_id)}
    assert any(path.endswith("-rows.parquet") for path in artifacts), artifacts


def test_a_new_challenger_ends_a_watch_and_a_champion_that_holds_is_kept(
    live_airflow: AirflowApi,
    service: str,
    settings: Settings,
    layout: Layout,
    challenger: tuple[str, dict[str, str]],
    worse: str,
) -> None:
    from flightplan.deployment.live import live_decision_path

    good = challenger[1]["version"]
    make_champion(settings, worse)
    ended = waits_deferred_for_live_rows(live_airflow, service, layout, copy_as_challenger(settings, good), False)
    live_airflow.wait_for_task(DAG, ended, "watch_champion", "deferred", timeout=600)
    newcomer = copy_as_challenger(settings, worse)  # the replaced champion answers no more: the watch is over
    assert live_airflow.wait_for_run(DAG, ended, timeout=300) == "success"
    assert aliases(settings)["challenger"] == newcomer and not live_decision_path(layout, ended, "watch").exists()

    # Replaced by a better one again, which holds on its live rows until the watch is over.
    make_champion(settings, worse)
    holding = copy_as_challenger(settings, good)
    kept = waits_deferred_for_live_rows(live_airflow, service, layout, holding, flipped=False)
    live_airflow.wait_for_task(DAG, kept, "watch_champion", "deferred", timeout=600)
    assert send_live_traffic(service, layout, flipped=False) >= LIVE_ROWS
    assert live_airflow.wait_for_run(DAG, kept, timeout=600) == "success"
    watch = decision_file(layout, kept, "watch")
    assert not watch["accepted"] and watch["note"].startswith(f"kept after {WATCH_HOURS:g} h"), watch
    assert watch["test"]["rows"] >= LIVE_ROWS and watch["test"]["gain"] < 0, watch  # the replaced one did worse
    assert {k: v for k, v in aliases(settings).items() if k != "previous"} == {"champion": holding}
    ready = httpx.get(f"{service}/ready").json()["pipelines"]["flights"]
    assert ready["version"] == holding and ready["challenger"]["version"] is None, ready


@pytest.mark.browser
def test_the_models_page_plots_every_live_decision(
    live_airflow: AirflowApi, refused: str, settings: Settings, layout: Layout, airflow_env: dict[str, str], page: Page
) -> None:
    """In a browser signed in to Airflow: both versions' values at each decision on file, and the decisions."""
    decisions = [json.loads(path.read_text()) for path in (layout.reports("deployment") / "live").glob("*.json")]
    expected = [d["test"][side] for d in decisions if d["test"] for side in ("candidate", "champion")]
    base = sign_in(page, live_airflow.base_url, admin_password(Path(airflow_env["AIRFLOW_HOME"])))
    page.goto(f"{base}/flightplan/")
    live = page.locator("section.live-traffic").first
    points = live.locator("svg[data-chart='live-gate'] circle")
    expect(points.first).to_be_visible()
    drawn = points.evaluate_all("all => all.map(point => Number(point.dataset.value))")
    assert sorted(drawn) == pytest.approx(sorted(expected), rel=1e-5), (drawn, expected)
    verdicts = live.locator("table tbody tr td:last-child span").all_inner_texts()
    assert verdicts.count("refused") >= 1 and len(verdicts) == len(decisions), verdicts
    shot(live, screenshots_folder(settings.home), "live-gate")
