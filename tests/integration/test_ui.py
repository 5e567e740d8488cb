"""The Models, Data and Label queue pages on the real registry, reports, curated data and prediction log.
Here the user and their role come from headers, and DAG runs are recorded instead of started; the plugin's real
Airflow login, auth manager and REST trigger are tested through a live Airflow in tests/e2e."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import Header, HTTPException, Request
from flightplan.config import PipelineConfig
from flightplan.layout import Layout
from flightplan.settings import Settings

from tests.support.web import chart, plotted


@dataclass(frozen=True)
class HeaderVisitor:
    """The simple auth manager's rule for DAGs: a viewer reads them, the other roles also edit and run them; a
    stranger (a role of another auth manager that grants nothing on these DAGs) does neither; a role named after a
    pipeline reads that pipeline's DAGs only."""

    name: str
    role: str

    def may(self, access: str, dag_ids: list[str]) -> bool:
        if self.role.endswith("-reader"):
            pipeline = self.role.removesuffix("-reader")
            return access == "read" and all(dag.startswith(f"{pipeline}.") for dag in dag_ids)
        return self.role != "stranger" and (access == "read" or self.role != "viewer")


async def user_from_headers(
    x_user: str | None = Header(default=None), x_role: str = Header(default="admin")
) -> HeaderVisitor:
    if not x_user:
        raise HTTPException(401, "Not authenticated")
    return HeaderVisitor(x_user, x_role)


@pytest.fixture(scope="module")
def ui(champion: str, settings: Settings) -> Iterator[tuple[Any, list[tuple[str, dict[str, Any]]]]]:
    from fastapi.testclient import TestClient
    from flightplan.ui.app import create_ui

    started: list[tuple[str, dict[str, Any]]] = []

    async def record_run(request: Request, dag_id: str, conf: dict[str, Any]) -> str:
        started.append((dag_id, conf))
        return f"manual__{len(started)}"

    async def one_run_each(request: Request, dag_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {dag: {"state": "success", "run_type": "manual", "dag_run_id": f"run-of-{dag}"} for dag in dag_ids[:2]}

    with TestClient(create_ui(user_from_headers, record_run, one_run_each, settings)) as client:
        client.headers["X-User"] = "alice"
        yield client, started


@pytest.fixture(scope="module")
def monitoring_report(champion: str, settings: Settings) -> Path:
    """A monitoring check of the champion (on an hour with no traffic); its summary's path under the reports."""
    from flightplan.monitoring.stages import MonitorJob, check

    far = datetime(2001, 1, 1, tzinfo=UTC)
    _, summary = check(MonitorJob("flights", far, far.replace(hour=1)))
    return summary.relative_to(settings.reports_root)


def test_every_page_and_file_needs_a_user(ui: tuple[Any, list]) -> None:
    client, _ = ui
    for path in ("/", "/pipelines/flights/data", "/pipelines/flights/label-queue", "/files/x.html", "/data-docs/x"):
        assert client.get(path, headers={"X-User": ""}).status_code == 401, path


def test_models_page_shows_the_champion_and_deploys_through_the_dag(
    ui: tuple[Any, list], champion: str, monitoring_report: Path
) -> None:
    client, started = ui
    page = client.get("/")
    assert page.status_code == 200
    assert f"<b>champion</b>: version {champion}" in page.text and "roc_auc" in page.text
    assert "Signed in as alice" in page.text and "undecided" in page.text
    assert "run-of-flights.data_engineering" in page.text and "run-of-flights.model_engineering" in page.text
    assert "flights.rollback</a></td><td>no run yet" in page.text
    deployed = client.post("/pipelines/flights/deploy", data={"version": champion, "reason": "looks good"})
    assert deployed.status_code == 200 and "manual__1" in deployed.text
    assert started[-1] == (
        "flights.deployment",
        {"version": champion, "reason": "looks good (deployed by alice from the Models page)"},
    )
    assert client.get("/pipelines/nowhere/data").status_code == 404


def test_data_view_counts_days_and_pages_rows(ui: tuple[Any, list], layout: Layout) -> None:
    from flightplan.ui.views import daily_counts

    client, _ = ui
    counts = daily_counts(layout)
    day = str(counts.index[0])
    page = client.get("/pipelines/flights/data")
    assert page.status_code == 200 and day in page.text and "delayed=1" in page.text
    rows = client.get("/pipelines/flights/data", params={"day": day, "page": 0})
    assert f"{int(counts.loc[day, 'rows']):,} rows, page 1" in rows.text
    for bad in ({"day": "not-a-date"}, {"day": day, "page": -1}, {"day": day, "page": "x"}):
        assert client.get("/pipelines/flights/data", params=bad).status_code == 422, bad


def test_a_label_set_in_the_queue_is_stored_as_feedback_with_the_users_name(
    ui: tuple[Any, list], settings: Settings, config: PipelineConfig, layout: Layout
) -> None:
    from fastapi.testclient import TestClient
    from flightplan.serving.app import ServiceOptions, create_app
    from flightplan.serving.inputs import json_records, request_fields
    from flightplan.ui.views import curated_rows, daily_counts, label_queue

    client, _ = ui
    day = date.fromisoformat(str(daily_counts(layout).index[0]))
    records = json_records(curated_rows(layout, day, 0, 20)[0], list(request_fields(config)))
    with TestClient(create_app(settings, ServiceOptions(["flights"], None, poll_seconds=3600))) as serving:
        assert serving.post("/v1/flights/predict/batch", json={"records": records}).status_code == 200
    queue = label_queue(settings, config, 5)
    assert queue and all(abs(q["probability"] - 0.5) <= abs(queue[-1]["probability"] - 0.5) for q in queue)
    page = client.get("/pipelines/flights/label-queue")
    assert queue[0]["id"] in page.text
    for bad in ("maybe", "7", "-1", "nan", "inf"):
        refused = client.post("/pipelines/flights/label-queue", data={"prediction_id": queue[0]["id"], "label": bad})
        assert refused.status_code == 422 and "expected 0 or 1" in refused.json()["detail"], bad
    answer = client.post(
        "/pipelines/flights/label-queue", data={"prediction_id": queue[0]["id"], "label": "1"}, follow_redirects=False
    )
    assert answer.status_code == 303
    engine = sa.create_engine(settings.predictions_db_url)
    with engine.connect() as connection:
        stored = connection.execute(
            sa.text("select label, source from feedback where prediction_id = :id"), {"id": queue[0]["id"]}
        ).all()
    engine.dispose()
    assert [tuple(row) for row in stored] == [("1", "airflow-ui:alice")]
    assert queue[0]["id"] not in client.get("/pipelines/flights/label-queue").text


def test_files_are_served_from_their_folder_only(ui: tuple[Any, list], monitoring_report: Path) -> None:
    client, _ = ui
    served = client.get(f"/files/{monitoring_report}")
    assert served.json()["pipeline"] == "flights"
    # Other tools' pages, carrying what clients sent: sandboxed, so their scripts never act as the Airflow user.
    assert served.headers["content-security-policy"] == "sandbox allow-scripts allow-popups allow-downloads"
    assert served.headers["x-content-type-options"] == "nosniff"
    for outside in ("%2E%2E/serving/predictions.db", "x%00.html", "a" * 5000):
        refused = client.get(f"/files/{outside}")
        assert refused.status_code == 404 and refused.json() == {"detail": "no such file"}, outside
    assert client.get("/data-docs/index%00.html").status_code == 404


def test_a_viewer_reads_but_neither_labels_nor_deploys_and_a_stranger_sees_nothing(
    ui: tuple[Any, list], champion: str, settings: Settings, config: PipelineConfig, monitoring_report: Path
) -> None:
    from flightplan.ui.views import label_queue

    client, started = ui
    viewer = {"X-User": "vera", "X-Role": "viewer"}
    runs_before = len(started)
    models = client.get("/", headers=viewer)
    assert models.status_code == 200 and f"version {champion}" in models.text and "/deploy'" not in models.text
    queued = label_queue(settings, config, 1)
    page = client.get("/pipelines/flights/label-queue", headers=viewer)
    assert page.status_code == 200 and (not queued or "name='label'" not in page.text)
    deploy = client.post("/pipelines/flights/deploy", data={"version": champion, "reason": "x"}, headers=viewer)
    assert deploy.status_code == 403 and "user 'vera' has no run access to flights.deployment" in deploy.text
    label = client.post("/pipelines/flights/label-queue", data={"prediction_id": "p", "label": "1"}, headers=viewer)
    assert label.status_code == 403 and "no edit access to flights.data_engineering" in label.text
    assert len(started) == runs_before

    stranger = {"X-User": "sam", "X-Role": "stranger"}
    assert "version " not in client.get("/", headers=stranger).text
    for path in ("/pipelines/flights/data", "/pipelines/flights/label-queue"):
        assert client.get(path, headers=stranger).status_code == 403, path
    # A file the user may not read is answered as a missing one: pipeline names cannot be probed through files.
    for path in (f"/files/{monitoring_report}", "/files/nowhere/x.json"):
        assert client.get(path, headers=stranger).json() == {"detail": "no such file"}, path
    assert client.get(f"/files/{monitoring_report}", headers=viewer).status_code == 200


def test_a_file_is_authorized_on_the_pipeline_it_resolves_to(
    champion: str, settings: Settings, tmp_path: Path, monitoring_report: Path
) -> None:
    """A user who may read one pipeline only cannot reach another's reports or Data Docs by a `..` in the path."""
    import dataclasses

    from fastapi.testclient import TestClient
    from flightplan.ui.app import create_ui

    flights = (settings.pipelines_dir / "flights.yaml").read_text()
    (tmp_path / "flights.yaml").write_text(flights)
    (tmp_path / "twin.yaml").write_text(flights.replace("name: flights", "name: twin", 1))
    two = dataclasses.replace(settings, pipelines_dir=tmp_path)

    async def no_run(request: Request, dag_id: str, conf: dict[str, Any]) -> str:
        raise AssertionError("nothing here starts a run")

    async def no_runs(request: Request, dag_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {}

    docs_page = "validations/twin/%2E%2E/%2E%2E/index.html"
    twin_reader = {"X-User": "tess", "X-Role": "twin-reader"}
    with TestClient(create_ui(user_from_headers, no_run, no_runs, two)) as ui_of_two:
        for path in (
            f"/files/twin/%2E%2E/{monitoring_report}",
            f"/files/twin/..%2F{monitoring_report}",
            f"/data-docs/{docs_page}",
        ):
            assert ui_of_two.get(path, headers=twin_reader).json() == {"detail": "no such file"}, path
        flights_reader = {"X-User": "fay", "X-Role": "flights-reader"}
        assert ui_of_two.get(f"/files/twin/%2E%2E/{monitoring_report}", headers=flights_reader).status_code == 200


def test_the_models_page_plots_live_gates_and_monitoring_windows(
    ui: tuple[Any, list], layout: Layout, monitoring_report: Path
) -> None:
    """Two live gates (one refused with a reason that carries markup) and the monitoring check on the page: a
    point per gate and side, a point per window, every text escaped."""
    from flightplan.manifests import LiveDecision

    client, _ = ui
    folder = layout.reports("deployment") / "live"
    for run, accepted, values in (("gate-1", False, (0.61, 0.64)), ("gate-2", True, (0.70, 0.64))):
        test = {"metric": "roc_auc", "rows": 400, "candidate": values[0], "champion": values[1], "p_value": 0.01,
                "gain": values[0] - values[1], "gain_lower": 0.01, "margin": 0.0, "confidence": 0.95,
                "resamples": 2000}  # fmt: skip
        reasons = [] if accepted else ["live roc_auc <script>alert(1)</script> lower"]
        decided = datetime(2026, 1, int(run[-1]), tzinfo=UTC)
        LiveDecision(pipeline="flights", candidate=run[-1], champion="9", decided_at=decided, accepted=accepted,
                     reasons=reasons, test=test).write(folder / f"{run}-live.json")  # fmt: skip
    LiveDecision(pipeline="flights", candidate="3", champion="2", decided_at=datetime(2026, 1, 3, tzinfo=UTC),
                 accepted=True, reasons=[], note="no champion yet").write(folder / "gate-3-live.json")  # fmt: skip
    page = client.get("/").text
    gate = chart(page, "live-gate")
    assert plotted(gate) == [0.61, 0.7, 0.64, 0.64]  # the candidate's points, then the champion's
    assert "live: version 2 against 9: promoted" in gate and "live: version 1 against 9: refused" in gate
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "data-chart='drift-share'" in page and "<svg class='chart' data-chart='drift-share'" in page
    assert "<p class='no-chart' data-chart='live-metric'>" in page  # the check's hour had no labeled rows
