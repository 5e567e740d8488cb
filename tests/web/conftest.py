"""A browser (tests/support/browser.py) and a stack to point it at, for the tests that use the web UIs as a
person does.

The stack is, by default, one that `flightplan up` starts for these tests on the session's home, with an
Airflow of its own and a copy of the flights pipeline that accepts any model (the gate is tested elsewhere;
here a quick search must register a version). With ``FLIGHTPLAN_WEB_STACK=running`` the tests use the stack
already running for ``FLIGHTPLAN_HOME`` instead, as `make demo` leaves it (`make screenshots`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flightplan.config import PipelineConfig
from flightplan.dev.airflow_rest import admin_password
from flightplan.layout import Layout
from flightplan.settings import Settings, api_token, load_settings

from tests.support.browser import screenshots_folder
from tests.support.engines import pipelines_with
from tests.support.pipeline import END_DAY, FIRST_DAY, REPO, SCRIPT_PAYLOAD
from tests.support.service import free_port, token_environment
from tests.support.web import WebStack

TOKEN = "web-test-token"
FLIGHTPLAN = str(Path(sys.executable).with_name("flightplan"))


@pytest.fixture(scope="module")
def web_stack(request: pytest.FixtureRequest) -> Iterator[WebStack]:
    if os.environ.get("FLIGHTPLAN_WEB_STACK") == "running":
        yield running_stack()
    else:
        yield from own_stack(request)


def running_stack() -> WebStack:
    """The stack `make demo` (or `make up`) runs for FLIGHTPLAN_HOME. The form asks for the pipeline's own
    number of trials: the search is seeded, so the new model matches the champion trained on the same split
    and passes the champion gate, which a shorter search could fail."""
    from flightplan.config import load_pipeline
    from flightplan.dev.stack import status

    settings = load_settings()
    stopped = [name for name, pid in status(settings).items() if pid is None and name != "mlflow"]
    assert not stopped, f"{stopped} not running for {settings.home}: `make demo` or `make up` first"
    token = api_token(settings)
    assert token, f"no inference API token under {settings.home}"
    trials = load_pipeline("flights", settings.pipelines_dir).model.tuning.trials
    password = admin_password(settings.airflow_home)
    return WebStack(settings, token, password, trials, screenshots_folder(settings.home))


def own_stack(request: pytest.FixtureRequest) -> Iterator[WebStack]:
    """`flightplan up` on the session's home (its data and registry, with a champion), an Airflow home of its
    own and free ports, then a monitoring check on traffic its service answered; `flightplan down` at the end.
    Its copy of the pipeline searches 2 trials and accepts any model; the form asks for 3."""
    request.getfixturevalue("champion")
    settings: Settings = request.getfixturevalue("settings")
    folder = settings.home / "web"
    pipelines = folder / "pipelines"
    pipelines.mkdir(parents=True, exist_ok=True)
    pipelines_with(settings, pipelines, {"acceptance": {"champion_margin": -1.0}})
    env = {
        **os.environ,
        "FLIGHTPLAN_HOME": str(settings.home),
        "FLIGHTPLAN_PIPELINES_DIR": str(pipelines),
        "AIRFLOW_HOME": str(folder / "airflow"),
        "FLIGHTPLAN_SPARK_SERVER": f"sc://localhost:{free_port()}",  # the stack's own, its tasks connect to it
        "FLIGHTPLAN_AIRFLOW_URL": f"http://127.0.0.1:{free_port()}",
        "FLIGHTPLAN_MLFLOW_UI_URL": f"http://127.0.0.1:{free_port()}",
        "FLIGHTPLAN_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
        **token_environment(TOKEN),
    }
    stack_settings = load_settings(env)
    started = subprocess.run([FLIGHTPLAN, "up"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        check_answered_traffic(stack_settings, request.getfixturevalue("config"))
        password = admin_password(stack_settings.airflow_home)
        yield WebStack(stack_settings, TOKEN, password, 3, screenshots_folder(settings.home))
    finally:
        stopped = subprocess.run([FLIGHTPLAN, "down"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def check_answered_traffic(settings: Settings, config: PipelineConfig) -> None:
    """A monitoring check with its Evidently reports, for the Models page to link: the replayed days answered
    by the stack's service (with their true labels), then the check on that window."""
    from datetime import UTC, datetime, timedelta

    from flightplan.dev.replay import replay_traffic
    from flightplan.monitoring.stages import MonitorJob, check
    from flightplan.tracking import RunContext

    with pytest.MonkeyPatch.context() as patch:
        for variable, value in token_environment(TOKEN).items():
            patch.setenv(variable, value)
        start = datetime.now(UTC).replace(microsecond=0)
        sent = replay_traffic(Layout(settings, config), FIRST_DAY, END_DAY)
        send_script_payloads(Layout(settings, config))
        end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    assert sent["answered"] == sent["labeled"] > 300
    small = {"monitoring.min_rows": 300, "monitoring.min_labeled_rows": 200}
    summary, _ = check(MonitorJob("flights", start, end, RunContext("monitoring", "web-test"), small))
    assert "drift_html" in summary.reports, summary.decision


def send_script_payloads(layout: Layout) -> None:
    """Twenty answers whose first categorical feature is a script, as a hostile client with the inference token
    could send: they reach the monitoring window and so the drift report that the browser tests open."""
    from datetime import timedelta

    from flightplan.dev.replay import labeled_days
    from flightplan.serving.client import service_client
    from flightplan.serving.inputs import json_records, request_fields

    frame = labeled_days(layout, FIRST_DAY, FIRST_DAY + timedelta(days=1)).head(20)
    frame[layout.config.features.categorical[0]] = SCRIPT_PAYLOAD
    records = json_records(frame, list(request_fields(layout.config)))
    with service_client(layout.settings) as http:
        http.post(f"/v1/{layout.config.name}/predict/batch", json={"records": records}).raise_for_status()
