"""The deployment and rollback DAGs against a real inference service process. Through `airflow dags test`:
promotion of the first and of a new version, a rollback on demand, a refused worse challenger, and an
automatic rollback when the service cannot take the new champion. Through the scheduler and the API
server: a promotion that waits for a person's answer, approved once and rejected once, and the Models page's
deploy and label forms as Airflow's auth manager allows them per role."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flightplan.dev.airflow_rest import AirflowApi
from flightplan.dev.stack import stack_dir
from flightplan.layout import Layout
from flightplan.settings import Settings

from tests.support.airflow import OPERATOR, VIEWER, airflow_api, dags_test, dags_test_failing, running_airflow
from tests.support.pipeline import aliases, copy_as_challenger, register_worse_challenger
from tests.support.service import free_port, service_process, token_environment

TOKEN = "e2e-deployment-token"
pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def service(settings: Settings) -> Iterator[str]:
    """A service that reloads only when told to (the deployment DAG does)."""
    with service_process(settings, TOKEN, poll_seconds=3600, wait_ready=False) as running:
        yield running["url"]


def serving(url: str) -> str | None:
    return httpx.get(f"{url}/ready").json()["pipelines"]["flights"]["version"]


def test_promote_rollback_refuse_and_automatic_rollback(
    airflow_env: dict[str, str],
    service: str,
    settings: Settings,
    layout: Layout,
    challenger: tuple[str, dict[str, str]],
) -> None:
    env = {**airflow_env, "FLIGHTPLAN_SERVICE_URL": service, **token_environment(TOKEN)}
    first = challenger[1]["version"]  # the module's first model: there is no champion yet

    log = dags_test(env, "flights.deployment", {"reason": "first model"})
    assert "[DAG TEST] end task task_id=smoke_test" in log
    assert aliases(settings)["champion"] == first and serving(service) == first

    second = copy_as_challenger(settings, first)
    dags_test(env, "flights.deployment", {})
    assert {k: aliases(settings)[k] for k in ("champion", "previous")} == {"champion": second, "previous": first}
    assert serving(service) == second

    dags_test(env, "flights.rollback", {"reason": "e2e rollback"})
    assert aliases(settings)["champion"] == first and "previous" not in aliases(settings)
    assert "challenger" not in aliases(settings)  # the version rolled back held it: no shadow or canary traffic
    assert serving(service) == first

    worse = register_worse_challenger()
    log = dags_test_failing(env, "flights.deployment", {})
    assert "ChallengerRefused" in log and f"version {worse} not promoted" in log
    assert aliases(settings)["champion"] == first

    unreachable = {**env, "FLIGHTPLAN_SERVICE_URL": f"http://127.0.0.1:{free_port()}"}
    log = dags_test_failing(unreachable, "flights.deployment", {"version": second})
    assert "cannot be reached" in log and "RolledBack" in log
    assert aliases(settings)["champion"] == first


@pytest.fixture(scope="module")
def approving_airflow(
    airflow_env: dict[str, str], service: str, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AirflowApi]:
    """A live Airflow whose flights pipeline requires a person's approval before each promotion."""
    pipelines = tmp_path_factory.mktemp("pipelines-with-approval")
    shutil.copytree(settings.pipelines_dir, pipelines, dirs_exist_ok=True)
    config = pipelines / "flights.yaml"
    config.write_text(config.read_text() + "\ndeployment:\n  require_approval: true\n")
    env = {
        **airflow_env,
        "FLIGHTPLAN_PIPELINES_DIR": str(pipelines),
        "FLIGHTPLAN_SERVICE_URL": service,
        **token_environment(TOKEN),
    }
    with running_airflow(env) as base:
        api = airflow_api(base, env)
        api.wait_until_parsed("flights.deployment")
        api.set_paused("flights.deployment", False)
        yield api


def deploy_with_answer(
    api: AirflowApi, scheduler_log: Path, version: str, answer: str
) -> tuple[str, dict[str, str | None]]:
    """Triggers a deployment of ``version``, answers its approval task, and returns the run's end state."""
    run_id = api.trigger("flights.deployment", {"version": version, "reason": answer})["dag_run_id"]
    api.wait_for_task("flights.deployment", run_id, "approve", "awaiting_input")
    # Answer only once the scheduler has taken in the exit of the worker that paused, as a person's answer
    # would come: in Airflow 3.3.2 an answer that arrives before it (a busy scheduler took 6 s here) races
    # it, and the task is marked failed ("finished with state success, but the task instance's state
    # attribute is queued").
    exit_seen = (
        "executor event with state success for task instance "
        f"TaskInstanceKey(dag_id='flights.deployment', task_id='approve', run_id='{run_id}'"
    )
    deadline = time.monotonic() + 120
    while exit_seen not in scheduler_log.read_text():
        assert time.monotonic() < deadline, "the scheduler never took in the paused approval task's exit"
        time.sleep(0.5)
    assert api.task_states("flights.deployment", run_id)["promote"] is None
    details = api.http.get(f"/dags/flights.deployment/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails")
    details.raise_for_status()
    assert details.json()["options"] == ["Approve", "Reject"] and "flights" in details.json()["subject"]
    api.http.patch(
        f"/dags/flights.deployment/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails",
        json={"chosen_options": [answer], "params_input": {}},
    ).raise_for_status()
    return api.wait_for_run("flights.deployment", run_id), api.task_states("flights.deployment", run_id)


def test_a_promotion_waits_for_a_persons_approval(
    approving_airflow: AirflowApi, service: str, settings: Settings
) -> None:
    """Runs after the test above, with its champion in place."""
    scheduler_log = stack_dir(settings) / "airflow-scheduler.log"
    champion = aliases(settings)["champion"]
    rejected = copy_as_challenger(settings, champion)
    state, tasks = deploy_with_answer(approving_airflow, scheduler_log, rejected, "Reject")
    assert state == "success", tasks
    assert {tasks[t] for t in ("promote", "reload_service", "smoke_test", "roll_back")} == {"skipped"}
    assert aliases(settings)["champion"] == champion and serving(service) == champion

    approved = copy_as_challenger(settings, champion)
    state, tasks = deploy_with_answer(approving_airflow, scheduler_log, approved, "Approve")
    assert state == "success", tasks
    assert tasks["smoke_test"] == "success" and tasks["roll_back"] == "skipped"
    assert {k: aliases(settings)[k] for k in ("champion", "previous")} == {"champion": approved, "previous": champion}
    assert serving(service) == approved


def test_a_failed_run_is_reported_with_the_end_of_its_failed_tasks_log(approving_airflow: AirflowApi) -> None:
    """What `flightplan demo` says when a run fails: the task states, then the end of each failed task's log as
    the REST API serves it (the log servers are off: it is read from the worker's file), with the exception."""
    from flightplan.dev.demo import DemoFailed, require

    conf = {"version": "999999", "reason": "no such version"}
    run = approving_airflow.trigger("flights.deployment", conf)
    state = approving_airflow.wait_for_run("flights.deployment", run["dag_run_id"])
    assert state == "failed"
    with pytest.raises(DemoFailed) as failed:
        require(state, "flights.deployment", approving_airflow, run)
    report = str(failed.value)
    assert "'compare': 'failed'" in report and "--- the end of compare's log ---" in report, report
    assert "Task failed with exception" in report and "999999" in report.split("compare's log ---", 1)[1], report


def test_the_models_page_lets_a_viewer_read_and_an_operator_deploy(
    approving_airflow: AirflowApi, airflow_env: dict[str, str]
) -> None:
    """The plugin asks Airflow's own auth manager (here the simple one and its roles) on each route."""
    base, home = approving_airflow.base_url, Path(airflow_env["AIRFLOW_HOME"])
    viewer, operator = AirflowApi(base, home, VIEWER), AirflowApi(base, home, OPERATOR)
    try:
        deploy = {"version": "999999", "reason": "roles"}
        label = {"prediction_id": "no-such-prediction", "label": "1"}
        as_viewer = {"Authorization": f"Bearer {viewer.token}"}
        page = httpx.get(f"{base}/flightplan/", headers=as_viewer, timeout=60)
        assert page.status_code == 200 and "Signed in as viewer" in page.text and "/deploy'" not in page.text
        refused = httpx.post(f"{base}/flightplan/pipelines/flights/deploy", data=deploy, headers=as_viewer, timeout=60)
        assert refused.status_code == 403 and "no run access to flights.deployment" in refused.text
        refused = httpx.post(f"{base}/flightplan/pipelines/flights/label-queue", data=label, headers=as_viewer)
        assert refused.status_code == 403 and "no edit access to flights.data_engineering" in refused.text

        as_operator = {"Authorization": f"Bearer {operator.token}"}
        page = httpx.get(f"{base}/flightplan/", headers=as_operator, timeout=60)
        assert page.status_code == 200 and "/deploy'" in page.text
        reached = httpx.post(f"{base}/flightplan/pipelines/flights/label-queue", data=label, headers=as_operator)
        assert reached.status_code == 404 and "no prediction 'no-such-prediction'" in reached.text
        started = httpx.post(
            f"{base}/flightplan/pipelines/flights/deploy", data=deploy, headers=as_operator, timeout=60
        )
        assert started.status_code == 200, started.text
        runs = approving_airflow.http.get("/dags/flights.deployment/dagRuns").json()["dag_runs"]
        run = next(r for r in runs if r["conf"].get("reason", "").startswith("roles (deployed by operator"))
        assert run["triggering_user_name"] == OPERATOR
        # No version 999999 exists: the run ends at its comparison, before any approval or promotion.
        assert approving_airflow.wait_for_run("flights.deployment", run["dag_run_id"]) == "failed"
    finally:
        viewer.close()
        operator.close()
