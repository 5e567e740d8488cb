"""The monitoring check on traffic answered by the real inference API (test client, SQLite prediction log)
against the champion's training split found through the registry: unshifted traffic holds, shifted traffic
with bad ground truth asks for a retraining, none while one runs, again after one failed, none within the cooldown
of a new model; a thin window does not decide."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from flightplan.layout import Layout
from flightplan.manifests import MonitoringSummary
from flightplan.monitoring.stages import outcome
from flightplan.settings import Settings

from tests.support.pipeline import SCRIPT_PAYLOAD
from tests.support.service import scoped_tokens

TOKEN = "monitoring-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL = {"monitoring.min_rows": 300, "monitoring.min_labeled_rows": 200, "monitoring.drift_share": 0.3}
SHIFTED = ("temp", "dewp", "humid", "wind_speed", "visib", "distance")


@pytest.fixture(scope="module")
def api(champion: str, settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient
    from flightplan.serving.app import ServiceOptions, create_app

    with TestClient(
        create_app(settings, ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600))
    ) as client:
        yield client


@pytest.fixture(scope="module")
def training_rows(champion: str, settings: Settings, layout: Layout) -> pd.DataFrame:
    from flightplan.monitoring.window import reference_frame

    return reference_frame(settings, layout.config, champion)[0]


def send(
    api: Any, layout: Layout, frame: pd.DataFrame, labels: pd.Series | None, answered_ids: list[str] | None = None
) -> tuple[datetime, datetime]:
    """Predicts every row of ``frame`` through the API (and sends ``labels`` back); returns the window that
    holds exactly these answers, and adds their ids to ``answered_ids``."""
    from flightplan.serving.inputs import json_records, request_fields

    time.sleep(1)  # windows are named to the second
    start = datetime.now(UTC)
    records = json_records(frame, list(request_fields(layout.config)))
    for first in range(0, len(records), 500):
        answered = api.post("/v1/flights/predict/batch", json={"records": records[first : first + 500]}, headers=AUTH)
        assert answered.status_code == 200, answered.text[:500]
        ids = [p["id"] for p in answered.json()["predictions"]]
        if answered_ids is not None:
            answered_ids.extend(ids)
        if labels is not None:
            truth = labels.iloc[first : first + 500].tolist()
            sent = api.post(
                "/v1/flights/feedback",
                json={"labels": [{"id": i, "label": int(v)} for i, v in zip(ids, truth, strict=True)]},
                headers={"Authorization": f"Bearer {scoped_tokens(TOKEN)['feedback']}"},
            )
            assert len(sent.json()["stored"]) == len(ids)
    time.sleep(0.01)
    return start, datetime.now(UTC)


def shifted(frame: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """The same flights on a hotter, windier evening, all from one carrier at one airport, whose name a hostile
    client made a script."""
    moved = frame.copy()
    for column in SHIFTED:
        moved[column] = moved[column] + 2 * moved[column].std()
    time_column = layout.config.source.time_column
    moved[time_column] = moved[time_column].dt.floor("D") + pd.Timedelta(hours=23)
    moved["carrier"], moved["origin"] = moved["carrier"].iloc[0], SCRIPT_PAYLOAD
    return moved


def check(
    start: datetime, end: datetime, /, overrides: dict[str, Any] | None = None, in_flight: bool = False
) -> dict[str, Any]:
    """A check of the window with ``overrides`` of the config (``in_flight``: as if a retraining were queued or
    running): its summary as the file holds it, and where the file is (``summary``)."""
    from flightplan.monitoring.policy import Waiting
    from flightplan.monitoring.stages import MonitorJob, check
    from flightplan.tracking import RunContext

    waiting = Waiting(retrainings=int(in_flight))
    job = MonitorJob("flights", start, end, RunContext("monitoring", "it"), {**SMALL, **(overrides or {})}, waiting)
    _, path = check(job)
    return {**json.loads(path.read_text()), "summary": str(path)}


def test_unshifted_traffic_holds_shifted_traffic_retrains_once(
    api: Any, layout: Layout, settings: Settings, training_rows: pd.DataFrame, champion: str
) -> None:
    from flightplan.model.registry import REASON_TAG
    from flightplan.monitoring.stages import RETRAIN_REASON, monitoring_experiment
    from flightplan.tracking import client, experiment_id

    mlflow_client = client(settings)
    label = layout.config.label.name
    same = training_rows.sample(n=min(len(training_rows), 1000), random_state=1)
    calm = check(*send(api, layout, same, same[label]))
    assert calm["rows"] == len(same) and calm["labeled_rows"] == len(same)
    assert calm["drift_share"] == 0.0, [c for c in calm["columns"] if c["drifted"]]
    assert calm["decision"]["outcome"] == "hold", calm["decision"]
    assert calm["performance"]["roc_auc"] > 0.6

    moved = shifted(same, layout)
    window = send(api, layout, moved, 1 - moved[label])
    stormy = check(*window)
    verdicts = {c["column"]: c["drifted"] for c in stormy["columns"]}
    moved_features = {*SHIFTED, "dep_hour", "carrier", "origin"} & set(verdicts)
    assert moved_features and all(verdicts[c] for c in moved_features), verdicts
    assert stormy["drift_share"] >= 0.3 and stormy["decision"]["outcome"] == "retrain", stormy["decision"]
    assert (
        "of the features and the model's output drift" in stormy["decision"]["reason"]
        and "roc_auc" in stormy["decision"]["reason"]
    )
    assert stormy["performance"]["roc_auc"] < 0.5
    assert [c["column"] for c in stormy["prediction_drift"]] == ["probability"]
    for report in ("drift", "summary", "performance"):
        for kind in ("html", "json"):
            assert Path(stormy["reports"][f"{report}_{kind}"]).stat().st_size > 1000, (report, kind)
    for report in ("drift_html", "summary_html"):
        drawn = Path(stormy["reports"][report]).read_text()
        # The airport's name is shown (Evidently's JSON writes U+FF1C as \uff1c), and no value opens a script.
        assert "<script>alert(" not in drawn and "\\uff1cscript>alert(" in drawn, report
    written = Path(stormy["summary"])
    assert outcome(MonitoringSummary.read(written), written)["decision"] == stormy["decision"]

    running = check(*window, in_flight=True)
    assert running["decision"]["outcome"] == "hold" and "already queued or running" in running["decision"]["reason"]
    # The retraining asked for failed (no new model, none running): the next check asks again.
    assert check(*window)["decision"]["outcome"] == "retrain"
    # The cooldown counts from the newest version a retraining asked for by a check registered: none yet (the
    # module's champion was trained for another reason), then the champion, as if it had been.
    assert check(*window, {"monitoring.cooldown_hours": 10_000})["decision"]["outcome"] == "retrain"
    name, version = layout.config.registered_model, champion
    mlflow_client.set_model_version_tag(name, version, REASON_TAG, f"{RETRAIN_REASON}{window[0]} to {window[1]}")
    try:
        again = check(*window, {"monitoring.cooldown_hours": 10_000})
    finally:
        mlflow_client.set_model_version_tag(name, version, REASON_TAG, "manual")
    assert again["decision"]["outcome"] == "hold" and "cooldown of 10000 h" in again["decision"]["reason"]
    runs = mlflow_client.search_runs(
        [experiment_id(mlflow_client, settings, monitoring_experiment(layout.config))],
        filter_string=f"tags.`flightplan.window` = '{window[0]:%Y%m%dT%H%M%S}-{window[1]:%Y%m%dT%H%M%S}'",
    )
    assert len(runs) == 1
    assert runs[0].data.metrics["drift_share"] == pytest.approx(stormy["drift_share"])
    assert np.isfinite(runs[0].data.metrics["live_roc_auc"])

    later = check(*window, {"monitoring.cooldown_hours": 0})
    assert later["decision"]["outcome"] == "retrain"


def test_a_bad_label_in_the_log_is_set_aside_and_the_check_still_decides(
    api: Any, layout: Layout, settings: Settings, training_rows: pd.DataFrame
) -> None:
    """Labels stored without the API's check (a 7 and a "banana" for a binary model) are left out of the
    metrics and counted; the check still judges the window."""
    from flightplan.prediction_log import create_store_engine, record_feedback

    label = layout.config.label.name
    rows = training_rows.sample(n=min(len(training_rows), 400), random_state=2)
    answered: list[str] = []
    start, end = send(api, layout, rows, rows[label], answered)
    engine = create_store_engine(settings.predictions_db_url)
    try:
        planted = dict(zip(answered[:2], [7, "banana"], strict=True))
        assert record_feedback(engine, "flights", planted, "by-hand")[0] == answered[:2]
    finally:
        engine.dispose()
    result = check(start, end)
    assert result["labels_set_aside"] == 2 and result["labeled_rows"] == len(rows) - 2
    assert result["decision"]["outcome"] in ("hold", "retrain") and "roc_auc" in result["performance"]


def test_rows_another_version_answered_are_counted_but_not_judged(
    api: Any, champion: str, layout: Layout, settings: Settings, training_rows: pd.DataFrame
) -> None:
    """A canary's rows in the champion's window (here shifted inputs, answered all wrong): the window's drift and
    live metrics stay the champion's own, and ``answered_by`` counts both versions."""
    from flightplan.prediction_log import AnsweredRequest, PredictionLog, create_store_engine, record_feedback
    from flightplan.serving.inputs import json_records, request_fields

    label = layout.config.label.name
    rows = training_rows.sample(n=min(len(training_rows), 400), random_state=3)
    start, end = send(api, layout, rows, rows[label])
    alone = check(start, end)
    canary, moved = str(int(champion) + 100), shifted(rows.head(300), layout)
    ids = [f"canary-{row}" for row in range(len(moved))]
    inputs = [json.dumps(record) for record in json_records(moved, list(request_fields(layout.config)))]
    engine = create_store_engine(settings.predictions_db_url)
    log = PredictionLog(engine)
    try:
        log.submit(AnsweredRequest("canary", "flights", canary, ids, inputs, ["1"] * len(ids), [0.99] * len(ids)))
        log.close()
        record_feedback(engine, "flights", dict.fromkeys(ids, 0), source="test")  # each answered 0.99 for 1
    finally:
        engine.dispose()
    mixed = check(start, datetime.now(UTC) + timedelta(seconds=1))
    assert mixed["answered_by"] == {champion: len(rows), canary: len(moved)}
    assert mixed["model_version"] == champion and mixed["rows"] == len(rows) == mixed["labeled_rows"]
    assert mixed["performance"] == alone["performance"] and mixed["drift_share"] == alone["drift_share"]


def test_a_thin_window_does_not_decide(api: Any, layout: Layout, training_rows: pd.DataFrame) -> None:
    few = shifted(training_rows.head(50), layout)
    result = check(*send(api, layout, few, None))
    assert result["rows"] == 50 and result["decision"]["outcome"] == "undecided"
    assert "fewer than 300" in result["decision"]["reason"]
    assert result["performance"] == {} and "performance_html" not in result["reports"]


def test_an_empty_window_reports_no_rows(champion: str) -> None:
    far = datetime(2001, 1, 1, tzinfo=UTC)
    result = check(far, far + timedelta(hours=1))
    assert result["rows"] == 0 and result["decision"]["outcome"] == "undecided" and result["reports"] == {}


def test_the_window_takes_the_latest_label_of_each_answer_in_the_order_answered(tmp_path: Path) -> None:
    """Two requests sealed into a segment, a third left as text (its writer knew no schema): one table, in the
    order answered, each row with its latest label."""
    import pyarrow as pa
    from flightplan.prediction_log import (
        LOG_LABEL,
        AnsweredRequest,
        PredictionLog,
        answered_table,
        create_store_engine,
        record_feedback,
    )

    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = create_store_engine(url)
    schema = pa.schema([("row", pa.string())])
    start = datetime.now(UTC)
    for request in range(3):
        log = PredictionLog(engine, (lambda _pipeline: schema) if request < 2 else None)
        ids = [f"r{request}-{row}" for row in range(4)]
        inputs = [json.dumps({"row": f"{request}.{row}"}) for row in range(4)]
        log.submit(AnsweredRequest(f"r{request}", "flights", "1", ids, inputs, ["1"] * 4, [0.5] * 4)).result()
        log.close()
    record_feedback(engine, "flights", {"r0-1": 0, "r2-3": 1}, source="test")
    record_feedback(engine, "flights", {"r0-1": 1}, source="test")
    with engine.connect() as connection:
        sealed = connection.execute(sa.text("select count(*) from prediction_segments where data is not null"))
        assert sealed.scalar_one() == 2
    table = answered_table(url, "flights", start, datetime.now(UTC) + timedelta(seconds=1), schema)
    engine.dispose()
    assert table.column("row").to_pylist() == [f"{request}.{row}" for request in range(3) for row in range(4)]
    labels = table.column(LOG_LABEL).to_pylist()
    assert labels[1] == "1" and labels[11] == "1" and labels.count(None) == 10


def test_a_report_that_cannot_be_drawn_fails_the_check_with_the_reason(tmp_path: Path) -> None:
    from flightplan.monitoring.report import ReportFailed, ReportJob, ReportProcess, Roles

    frame = pd.DataFrame({"temp": [1.0, 2.0, 3.0], "probability": [0.1, 0.2, 0.3]})
    job = ReportJob("drift", frame, frame, Roles(["temp"], [], "binary"), {"temp": "no such test", "probability": "ks"})
    with ReportProcess() as drawer:
        drawer.draw([job], tmp_path, rows=1000)
        with pytest.raises(ReportFailed, match="no such test"):
            drawer.wait()
    with ReportProcess() as idle:
        assert idle.wait() == {}
