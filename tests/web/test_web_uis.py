"""The web UIs as a person uses them, in a real browser (headless Chromium driven by Playwright):

- the Airflow UI: sign in, trigger `flights.model_engineering` from its form with changed Params, watch the run reach
  success, find the version it registered on the Models page, then the GX validation and the Evidently report
  that page links;
- the MLflow UI: the table of training runs, and the comparison of two of them;
- the inference API's docs: authorize with the token and send a prediction request.

Each step saves a screenshot under FLIGHTPLAN_SCREENSHOTS (else ``<home>/screenshots``); the README's come from
a run against the demo's stack (`make screenshots`)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

import pytest
from flightplan.manifests import MonitoringSummary
from playwright.sync_api import Dialog, Page, expect

from tests.support.browser import shot, sign_in
from tests.support.web import WebStack

pytestmark = pytest.mark.browser
RUN_TIMEOUT_MS = 900_000


def registered_by(web: WebStack, run_id: str) -> str:
    """The registry version that a model_engineering run registered (its lineage tag names the run)."""
    from flightplan.tracking import client

    versions = client(web.settings).search_model_versions("name = 'flights-delayed'")
    found = [v.version for v in versions if v.tags.get("airflow.run_id") == run_id]
    assert len(found) == 1, f"run {run_id} registered {found}"
    return str(found[0])


def test_a_run_triggered_from_the_form_succeeds_and_its_version_is_on_the_models_page(
    page: Page, web_stack: WebStack
) -> None:
    base = sign_in(page, web_stack.settings.airflow_url, web_stack.password)
    page.goto(f"{base}/dags")
    expect(page.get_by_role("link", name="flights.model_engineering", exact=True)).to_be_visible()
    shot(page, web_stack.screenshots, "airflow-dags")

    page.get_by_role("link", name="flights.model_engineering", exact=True).click()
    trigger = page.get_by_role("button", name="Trigger Dag")
    expect(trigger).to_have_count(1)  # the list's buttons, one per DAG, are gone
    trigger.click()
    form = page.get_by_role("dialog")
    form.locator("input[name=element_trials]").fill(str(web_stack.trials))
    form.locator("input[name=element_reason]").fill("retrained from the browser")
    shot(page, web_stack.screenshots, "airflow-trigger-form")
    form.get_by_role("button", name="Trigger", exact=True).click()

    expect(page).to_have_url(re.compile(r"/dags/flights\.model_engineering/runs/"))
    run_id = unquote(page.url.rsplit("/runs/", 1)[1])
    state = page.get_by_role("heading", name=run_id, exact=True).locator("xpath=..").get_by_test_id("state-badge")
    expect(state).to_have_text(re.compile("^(Success|Failed)$"), timeout=RUN_TIMEOUT_MS)
    shot(page, web_stack.screenshots, "airflow-run")
    assert state.inner_text() == "Success", f"model_engineering {run_id} failed: see {page.url}"
    tasks = page.get_by_test_id("table-list")
    for task in ("features", "tune", "train", "evaluate", "accept", "package", "register"):
        expect(tasks.get_by_role("link", name=task, exact=True)).to_be_visible()
    expect(tasks.get_by_text("Success", exact=True)).to_have_count(7)

    version = registered_by(web_stack, run_id)
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Models").click()
    models = page.frame_locator("iframe")
    challenger = models.locator(".card").filter(has_text=f"challenger: version {version}")
    expect(challenger).to_contain_text("retrained from the browser")
    expect(challenger).to_contain_text("test roc_auc")
    shot(page, web_stack.screenshots, "models-page")


def test_the_models_page_opens_the_validation_and_the_drift_report(page: Page, web_stack: WebStack) -> None:
    base = sign_in(page, web_stack.settings.airflow_url, web_stack.password)
    page.goto(f"{base}/flightplan/")
    # The charts are drawn from the monitoring checks of the live traffic (tests/web/conftest.py).
    checks = [
        MonitoringSummary.read(p) for p in web_stack.settings.reports_root.glob("flights/monitoring/*/summary.json")
    ]
    for name, values in (
        ("live-metric", [c.performance[c.primary_metric] for c in checks if c.primary_metric in c.performance]),
        ("drift-share", [c.drift_share for c in checks]),
    ):
        points = page.locator(f"svg[data-chart='{name}'] circle")
        expect(points.first).to_be_visible()
        drawn = [float(value or "nan") for value in points.evaluate_all("all => all.map(c => c.dataset.value)")]
        assert values and sorted(drawn) == pytest.approx(sorted(values), rel=1e-5), (name, drawn, values)
    page.get_by_role("link", name=re.compile("^GX validation ")).click()
    expect(page.get_by_text("Expectation Validation Result")).to_be_visible()
    overview = page.get_by_text("Expectation Suite: flights")
    expect(overview).to_be_visible()
    overview.evaluate("element => element.scrollIntoView({block: 'start'})")
    shot(page, web_stack.screenshots, "gx-validation")

    page.go_back()
    # The report draws on traffic that carried a script (tests/web/conftest.py): it must not run.
    dialogs: list[str] = []
    requests: list[str] = []

    def dismissed(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismissed)
    page.on("request", lambda request: requests.append(request.url))
    with page.expect_response(re.compile(r"/flightplan/files/.*drift\.html$")) as report:
        page.get_by_role("link", name="drift", exact=True).first.click()
    assert "sandbox allow-scripts" in report.value.headers["content-security-policy"]  # no Airflow origin
    expect(page.get_by_text("Dataset Drift", exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(r"Drift is (not )?detected for"))).to_be_visible()
    assert dialogs == [] and page.title() != "pwned"
    assert [url for url in requests if "/api/" in url] == []
    shot(page, web_stack.screenshots, "evidently-drift")


def test_two_training_runs_side_by_side_in_mlflow(page: Page, web_stack: WebStack) -> None:
    from flightplan.tracking import client, model_experiment

    mlflow_client = client(web_stack.settings)
    experiment = mlflow_client.get_experiment_by_name(model_experiment(_config(web_stack)))
    assert experiment is not None
    page.goto(f"{web_stack.settings.mlflow_ui_url.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs")
    assistant = page.get_by_role("button", name="Close", exact=True)
    if assistant.count():  # MLflow's assistant panel opens beside the table on a first visit
        assistant.last.click()
    rows = page.get_by_role("checkbox", name=re.compile("toggle row selection"))
    expect(rows.nth(1)).to_be_visible()
    shot(page, web_stack.screenshots, "mlflow-runs")
    rows.first.check()  # the newest run and the oldest: the model of the first data
    rows.last.check()
    page.get_by_role("button", name="Compare", exact=True).click()
    if assistant.count():
        assistant.last.click()

    expect(page.get_by_text("Comparing 2 Runs from 1 Experiment")).to_be_visible()
    compared = json.loads(unquote(page.url).split("runs=", 1)[1].split("&", 1)[0])
    for run_id in compared:
        run = mlflow_client.get_run(run_id)
        assert run.info.experiment_id == experiment.experiment_id and "test_roc_auc" in run.data.metrics
    metrics = page.get_by_text("Metrics", exact=True).last
    metrics.evaluate("element => element.scrollIntoView({block: 'start'})")
    expect(page.get_by_text("test_roc_auc", exact=True).last).to_be_visible()
    shot(page, web_stack.screenshots, "mlflow-compare")


def test_the_api_docs_send_an_authorized_prediction(page: Page, web_stack: WebStack) -> None:
    from flightplan.deployment.stages import recent_records
    from flightplan.layout import Layout
    from flightplan.model.registry import CHAMPION, alias_version

    layout = Layout(web_stack.settings, _config(web_stack))
    _, records = recent_records(layout, 1)
    page.goto(f"{web_stack.settings.service_url.rstrip('/')}/docs")
    page.get_by_role("button", name="Authorize").first.click()
    # One bearer scheme per scope of the API: the predict token goes to its own.
    predict_scheme = page.locator(".auth-container", has_text="predict token")
    expect(page.locator(".auth-container")).to_have_count(3)
    predict_scheme.get_by_label("auth-bearer-value").fill(web_stack.token)
    predict_scheme.get_by_role("button", name="Apply credentials").click()
    predict_scheme.get_by_role("button", name="Close").click()

    operation = page.locator(f"#operations-pipeline_{web_stack.pipeline}-predict_v1_{web_stack.pipeline}_predict_post")
    operation.locator(".opblock-summary").click()
    operation.locator("textarea.body-param__text").fill(json.dumps(records[0], indent=2))
    operation.get_by_role("button", name="Execute").click()

    response = operation.locator(".live-responses-table .response")
    expect(response.locator(".response-col_status")).to_have_text("200")
    answer: dict[str, Any] = json.loads(response.locator(".response-col_description pre").first.inner_text())
    champion = alias_version(web_stack.settings, layout.config.registered_model, CHAMPION)
    assert answer["model_version"] == champion and 0.0 <= answer["probability"] <= 1.0
    # The answer at the top of the screen: the curl command above it shows the token.
    response.evaluate("element => element.scrollIntoView({block: 'start'})")
    shot(page, web_stack.screenshots, "api-docs")


def _config(web: WebStack) -> Any:
    from flightplan.config import load_pipeline

    return load_pipeline(web.pipeline, web.settings.pipelines_dir)
