"""The loop closed through a real Airflow (scheduler, dag-processor, API server) and a real service process:
three days of July traffic with their true labels reach the champion trained on January, the monitoring DAG finds the
season's drift and triggers model_engineering. A person stops that retraining (marks it failed), which starts no
cooldown: the next check asks again, and that challenger goes through the acceptance gate and the
asset-scheduled deployment DAG; the service ends up serving the promoted version, and a check of the same window
after it is held by the cooldown."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import pytest
import yaml
from flightplan.layout import Layout
from flightplan.settings import Settings

from tests.support.airflow import airflow_api, running_airflow
from tests.support.pipeline import run_data_engineering
from tests.support.service import service_process, token_environment

TOKEN = "e2e-monitoring-token"
JULY, JULY_END = date(2013, 7, 1), date(2013, 7, 4)
pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def service(settings: Settings, champion: str) -> Iterator[str]:
    """The service of the module's champion, trained on the first days of January; it reloads when told to."""
    with service_process(settings, TOKEN, poll_seconds=3600, wait_ready=True) as running:
        yield running["url"]


@pytest.fixture(scope="module")
def loop_env(airflow_env: dict[str, str], service: str, settings: Settings, tmp_path_factory: Any) -> dict[str, str]:
    """The flights pipeline with a small search, the monitoring minimums of a small window, and no absolute
    acceptance thresholds (they are set for a year of data; here the challenger must still beat the champion
    on the same test set, and again on the recent days in the deployment DAG)."""
    pipelines = tmp_path_factory.mktemp("pipelines-small")
    config = yaml.safe_load((settings.pipelines_dir / "flights.yaml").read_text())
    config["model"]["tuning"].update({"trials": 2, "num_boost_round": 60})
    config["model"]["acceptance"].update({"minimum": {}, "maximum": {}})
    config["monitoring"] = {"min_rows": 300, "min_labeled_rows": 200, "window_hours": 1}
    (pipelines / "flights.yaml").write_text(yaml.safe_dump(config))
    return {
        **airflow_env,
        "FLIGHTPLAN_PIPELINES_DIR": str(pipelines),
        "FLIGHTPLAN_SERVICE_URL": service,
        **token_environment(TOKEN),
        # The scheduler's DAG-run creation, which also turns asset events into runs (deployment needs it);
        # monitoring's own scheduled run for yesterday finds no traffic and decides nothing.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
    }


def test_drifted_traffic_retrains_and_the_gates_promote(
    loop_env: dict[str, str],
    service: str,
    settings: Settings,
    layout: Layout,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flightplan.dev.replay import replay, replay_traffic

    replay(layout, JULY, JULY_END)
    run_data_engineering(JULY, JULY_END)  # the DAG itself: tests/e2e/test_airflow.py
    for variable, value in token_environment(TOKEN).items():
        monkeypatch.setenv(variable, value)
    served = httpx.get(f"{service}/ready").json()["pipelines"]["flights"]["version"]
    sent = replay_traffic(Layout(dataclasses.replace(settings, service_url=service), layout.config), JULY, JULY_END)
    assert sent["answered"] == sent["rows"] == sent["labeled"] > 300

    with running_airflow(loop_env) as base:
        api = airflow_api(base, loop_env)
        for dag_id in (
            "flights.model_engineering",
            "flights.deployment",
            "flights.monitoring",
        ):  # monitoring's scheduled run last
            api.wait_until_parsed(dag_id)
            api.set_paused(dag_id, False)
        failed = retraining_asked_for(api)
        api.mark("flights.model_engineering", failed["dag_run_id"], "failed")  # as a person would stop it
        assert api.wait_for_run("flights.model_engineering", failed["dag_run_id"]) == "failed"

        training = retraining_asked_for(api)  # the failed retraining gave no model: no cooldown holds this one
        assert training["conf"]["reason"].startswith("monitoring ")
        assert api.wait_for_run("flights.model_engineering", training["dag_run_id"]) == "success", api.task_states(
            "flights.model_engineering", training["dag_run_id"]
        )
        deployment = api.wait_for_new_run("flights.deployment", training["run_after"])
        assert api.wait_for_run("flights.deployment", deployment["dag_run_id"]) == "success", api.task_states(
            "flights.deployment", deployment["dag_run_id"]
        )

        # The same drifted window checked again: the retraining that gave the new model starts the cooldown.
        held = api.trigger("flights.monitoring", {})
        assert api.wait_for_run("flights.monitoring", held["dag_run_id"]) == "success"
        assert api.task_states("flights.monitoring", held["dag_run_id"])["retrain"] == "skipped"
        decision = api.returned("flights.monitoring", held["dag_run_id"], "check")["decision"]
        assert not decision["retrain"] and "within the cooldown" in decision["reason"], decision

    from flightplan.model.registry import CHAMPION, alias_version

    champion = alias_version(settings, layout.config.registered_model, CHAMPION)
    assert champion != served
    assert httpx.get(f"{service}/ready").json()["pipelines"]["flights"]["version"] == champion


def retraining_asked_for(api: Any) -> dict[str, Any]:
    """A monitoring run triggered now, which must ask for a retraining: the model_engineering run it started."""
    monitoring_run = api.trigger("flights.monitoring", {})
    assert api.wait_for_run("flights.monitoring", monitoring_run["dag_run_id"]) == "success"
    states = api.task_states("flights.monitoring", monitoring_run["dag_run_id"])
    assert states["retrain"] == "success", api.returned("flights.monitoring", monitoring_run["dag_run_id"], "check")
    return dict(api.wait_for_new_run("flights.model_engineering", monitoring_run["run_after"]))
