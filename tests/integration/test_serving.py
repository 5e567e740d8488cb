"""The inference API on the registered model of the demo days: real MLflow registry, onnxruntime, SQLite
prediction log; in-process through FastAPI's test client, and as a real server process over HTTP."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flightplan.config import PipelineConfig
from flightplan.features import FeatureMap, encode
from flightplan.layout import Layout
from flightplan.serving.inputs import InvalidRecord, RowEncoder, json_records, record_type, request_fields
from flightplan.settings import Settings
from pydantic import TypeAdapter

from tests.support.service import scoped_tokens, service_process
from tests.support.serving_clients import (
    ADMIN_AUTH,
    AUTH,
    FEEDBACK_AUTH,
    TOKEN,
    Load,
    auth_for,
    client_records,
    predictions_in_log,
    rows_answered,
)


def test_row_encoder_matches_the_training_encoder(
    challenger: tuple[str, dict[str, str]], layout: Layout, config: PipelineConfig
) -> None:
    """No training/serving skew: JSON records of the test side encode to the training matrix exactly."""
    run_id = challenger[0]
    feature_map = FeatureMap.load(layout.model_run(run_id) / "feature_map.json")
    frame = pd.read_parquet(layout.model_run(run_id) / "frames" / "test.parquet")
    # What the API does with a request body before encoding it.
    record: Any = record_type(config)  # built from the config: typed as Any for the checker
    records = TypeAdapter(list[record]).validate_python(client_records(layout, run_id))
    served = RowEncoder(config, feature_map).encode(records)
    assert np.array_equal(served, encode(frame, feature_map), equal_nan=True)


def test_row_encoder_trims_and_fills_as_wrangling_does(config: PipelineConfig) -> None:
    feature_map = FeatureMap.from_json(
        json.dumps(
            {
                "features": [
                    {"name": "origin", "kind": "categorical", "categories": ["EWR", "JFK"]},
                    {"name": "precip", "kind": "numeric"},
                    {"name": "dep_hour", "kind": "numeric"},
                ],
                "label": "delayed",
                "task": "binary",
                "fill": {"precip": 0.0},
            }
        )
    )
    from datetime import datetime

    matrix = RowEncoder(config, feature_map).encode(
        [{"origin": " JFK ", "time_hour": datetime.fromisoformat("2013-06-01T12:00:00+00:00")}]
    )
    assert matrix.tolist() == [[1.0, 0.0, 8.0]]  # 12:00 UTC is 08:00 in New York (summer time)
    with pytest.raises(InvalidRecord, match="record 0: time_hour=0001-01-01T00:00:00"):
        RowEncoder(config, feature_map).encode([{"time_hour": datetime(1, 1, 1)}])
    with pytest.raises(InvalidRecord, match="record 0: precip=1000"):
        RowEncoder(config, feature_map).encode([{"precip": 10**400, "time_hour": datetime(2013, 1, 1)}])


@pytest.fixture(scope="module")
def api(champion: str, settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient
    from flightplan.serving.app import ServiceOptions, create_app

    app = create_app(settings, ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600))
    with TestClient(app) as client:
        yield client


def predicted_rows(metrics: str) -> float:
    """The flights pipeline's count of predicted rows in the service's metrics (0 before its first)."""
    prefix = 'flightplan_predicted_rows_total{pipeline="flights"} '
    return next((float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix)), 0.0)


def test_predict_answers_with_version_and_logs_every_row(
    api: Any, champion: str, layout: Layout, challenger: tuple[str, dict[str, str]]
) -> None:
    records = client_records(layout, challenger[0], 40)
    assert api.get("/ready").json()["pipelines"]["flights"]["version"] == champion
    rows_before = predicted_rows(api.get("/metrics").text)
    one = api.post("/v1/flights/predict", json=records[0], headers=AUTH)
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model_version"] == champion and body["prediction"] in (0, 1) and 0 <= body["probability"] <= 1
    batch = api.post("/v1/flights/predict/batch", json={"records": records}, headers=AUTH)
    assert batch.status_code == 200, batch.text
    answers = batch.json()["predictions"]
    assert len(answers) == 40 and len({a["id"] for a in answers}) == 40
    assert (
        predictions_in_log(layout.settings.predictions_db_url, [body["request_id"], batch.json()["request_id"]]) == 41
    )
    same = api.post("/v1/flights/predict", json=records[5], headers=AUTH).json()
    assert same["probability"] == pytest.approx(answers[5]["probability"], abs=1e-6)

    feedback = api.post(
        "/v1/flights/feedback",
        json={"labels": [{"id": body["id"], "label": 1}, {"id": "no-such-id", "label": 0}]},
        headers=FEEDBACK_AUTH,
    )
    assert feedback.json() == {"stored": [body["id"]], "unknown": ["no-such-id"]}
    metrics = api.get("/metrics").text
    assert predicted_rows(metrics) == rows_before + 42
    assert f'flightplan_model_version{{model="champion",pipeline="flights"}} {float(champion)}' in metrics


def test_a_closed_log_refuses_rows_at_once(tmp_path: Path) -> None:
    """After the writer stops (service shutdown), a request's rows fail at once instead of waiting forever."""
    from flightplan.prediction_log import AnsweredRequest, PredictionLog, create_store_engine

    engine = create_store_engine(f"sqlite:///{tmp_path / 'log.db'}")
    log = PredictionLog(engine)
    answered = AnsweredRequest("r", "flights", "1", ["r"], ["{}"], ["1"], [0.5])
    assert log.submit(answered).result(timeout=10) is None
    log.close()
    with pytest.raises(RuntimeError, match="prediction log is closed"):
        log.submit(answered).result(timeout=1)
    engine.dispose()


def test_requests_without_the_token_or_with_bad_fields_are_refused(
    api: Any, layout: Layout, challenger: tuple[str, dict[str, str]]
) -> None:
    record = client_records(layout, challenger[0], 1)[0]
    before = predictions_in_log(layout.settings.predictions_db_url)
    missing = api.post("/v1/flights/predict", json=record)
    assert missing.status_code == 401 and "Bearer" in missing.json()["detail"]
    wrong = api.post("/v1/flights/predict", json=record, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    unknown = api.post("/v1/flights/predict", json={**record, "arr_delay": 3}, headers=AUTH)
    assert unknown.status_code == 422 and "arr_delay" in unknown.text
    no_time = api.post("/v1/flights/predict", json={k: v for k, v in record.items() if k != "time_hour"}, headers=AUTH)
    assert no_time.status_code == 422 and "time_hour" in no_time.text
    assert api.post("/admin/reload").status_code == 401
    huge = api.post("/v1/flights/predict", json={**record, "distance": 10**400}, headers=AUTH)
    assert huge.status_code == 422 and "distance" in huge.text
    assert predictions_in_log(layout.settings.predictions_db_url) == before


def test_each_token_does_only_what_its_scope_allows(
    api: Any, layout: Layout, settings: Settings, challenger: tuple[str, dict[str, str]]
) -> None:
    from fastapi.testclient import TestClient
    from flightplan.serving.app import ServiceOptions, create_app

    record = client_records(layout, challenger[0], 1)[0]
    landing = sorted(layout.landing.rglob("*"))
    before = predictions_in_log(settings.predictions_db_url)
    writes = {
        "/v1/flights/feedback": {"labels": []},
        "/v1/flights/records": {"records": [record]},
        "/admin/reload": None,
    }
    for path, body in writes.items():
        refused = api.post(path, json=body, headers=AUTH)
        assert refused.status_code == 403 and "this token may not" in refused.json()["detail"], path
    for header in (FEEDBACK_AUTH, ADMIN_AUTH):
        refused = api.post("/v1/flights/predict", json=record, headers=header)
        assert refused.status_code == 403 and "send the FLIGHTPLAN_API_TOKEN" in refused.json()["detail"]
    assert api.post("/admin/reload", headers=FEEDBACK_AUTH).status_code == 403
    assert api.post("/v1/flights/records", json={"records": []}, headers=ADMIN_AUTH).status_code == 403
    assert sorted(layout.landing.rglob("*")) == landing and predictions_in_log(settings.predictions_db_url) == before

    document = api.get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"predict token", "feedback token", "admin token"}
    for path in ("/v1/flights/predict", "/v1/flights/predict/batch", "/v1/flights/feedback", "/v1/flights/records"):
        scheme = "feedback token" if auth_for(path) is FEEDBACK_AUTH else "predict token"
        assert document["paths"][path]["post"]["security"] == [{scheme: []}], path
    assert document["paths"]["/admin/reload"]["post"]["security"] == [{"admin token": []}]

    # A service given only the predict token keeps the other scopes closed, whatever is sent.
    only_predict = TestClient(create_app(settings, ServiceOptions(["flights"], {"predict": TOKEN}, poll_seconds=3600)))
    closed = only_predict.post("/v1/flights/feedback", json={"labels": []}, headers=FEEDBACK_AUTH)
    assert closed.status_code == 403 and "no FLIGHTPLAN_FEEDBACK_TOKEN" in closed.json()["detail"]


def test_a_model_that_cannot_serve_is_refused_and_the_old_one_keeps_answering(
    api: Any, champion: str, layout: Layout, settings: Settings, challenger: tuple[str, dict[str, str]]
) -> None:
    """A version whose feature map needs an input the pipeline does not take: the reload reports it."""
    import mlflow
    import onnx
    from flightplan.model.registry import load_alias
    from flightplan.tracking import client

    good = load_alias(settings, "flights-delayed", "champion")
    assert good is not None
    broken_map = json.loads(good.feature_map.to_json())
    broken_map["features"][0]["name"] = "not_an_input"
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name("flights-model-engineering")
    assert experiment is not None
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        info = mlflow.onnx.log_model(
            onnx.load_from_string(good.onnx), name="model", metadata={**good.metadata, "feature_map": broken_map}
        )
    broken = str(mlflow.register_model(info.model_uri, "flights-delayed").version)
    mlflow_client.set_registered_model_alias("flights-delayed", "champion", broken)
    try:
        result = api.post("/admin/reload", headers=ADMIN_AUTH).json()[0]
        assert result["serving"] == champion and "not_an_input" in result["error"]
        record = client_records(layout, challenger[0], 1)[0]
        answer = api.post("/v1/flights/predict", json=record, headers=AUTH).json()
        assert answer["model_version"] == champion
        served = api.get("/ready").json()["pipelines"]["flights"]
        assert served["refused_version"] == broken and "not_an_input" not in json.dumps(served)
    finally:
        mlflow_client.set_registered_model_alias("flights-delayed", "champion", champion)


def test_openapi_fuzzing_finds_no_server_error(champion: str, settings: Settings) -> None:
    """Schemathesis over every operation of the OpenAPI document: no 5xx, responses match the schema.
    It runs an app of its own: schemathesis starts the app's lifespan and ends it after the test."""
    import schemathesis
    from flightplan.serving.app import ServiceOptions, create_app
    from hypothesis import HealthCheck, given
    from hypothesis import settings as examples
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    app = create_app(settings, ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    for operation in schema.get_all_operations():
        op = operation.ok()  # type: ignore[union-attr]  # an invalid operation would have failed the schema's load

        @given(case=op.as_strategy())
        @examples(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            # A schema cannot type MLflow's column formats (a value's type depends on its column's position): a
            # body the schema allows may still be refused there, with a documented 422.
            positional = [positive_data_acceptance] if case.operation.path.endswith("/invocations") else []
            case.call_and_validate(headers=auth_for(case.operation.path), excluded_checks=positional)

        check()


@pytest.fixture
def server(champion: str, settings: Settings) -> Iterator[dict[str, Any]]:
    """The service as its own process, polling the alias every second: one per test, as one of them stops it."""
    with service_process(settings, TOKEN, poll_seconds=1, wait_ready=True) as running:
        yield running


def test_hot_reload_under_load_fails_no_request(
    server: dict[str, Any], champion: str, layout: Layout, settings: Settings, challenger: tuple[str, dict[str, str]]
) -> None:
    """A new version behind the alias is picked up by the poller while clients keep sending."""
    import mlflow
    from flightplan.tracking import client

    mlflow_client = client(settings)
    source = mlflow_client.get_model_version("flights-delayed", champion).source
    newer = str(mlflow.register_model(source, "flights-delayed").version)
    records = client_records(layout, challenger[0], 200)
    with Load(server["url"], records) as load:
        time.sleep(2)
        mlflow_client.set_registered_model_alias("flights-delayed", "champion", newer)
        deadline = time.monotonic() + 30
        while not any(a["model_version"] == newer for a in load.answers[-50:]):
            assert time.monotonic() < deadline, server["output"].read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(1)
    assert load.failures == []
    versions = {a["model_version"] for a in load.answers}
    assert versions == {champion, newer}
    mlflow_client.set_registered_model_alias("flights-delayed", "champion", champion)


def test_sigterm_under_load_loses_no_answered_prediction(
    server: dict[str, Any], layout: Layout, challenger: tuple[str, dict[str, str]]
) -> None:
    """Every request answered before or during a SIGTERM is in the prediction log."""
    records = client_records(layout, challenger[0], 200)
    with Load(server["url"], records) as load:
        time.sleep(2)
        server["process"].send_signal(signal.SIGTERM)
        server["process"].wait(60)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught, so the exit status is -15.
    assert "Application shutdown complete" in server["output"].read_text()
    answered = load.answers
    assert len(answered) > 50
    assert predictions_in_log(layout.settings.predictions_db_url, [a["request_id"] for a in answered]) == rows_answered(
        answered
    )


def test_collected_records_are_ingested_by_the_next_run_and_bad_ones_refused(api: Any, layout: Layout) -> None:
    """Good raw records become a landing file of today that ingestion reads; bad ones come back with reasons."""
    from datetime import UTC, datetime, timedelta

    from flightplan.data import stages as data_stages

    landing_day = sorted(p for p in layout.landing.iterdir() if p.is_dir())[0]
    raw = pd.read_csv(next(landing_day.glob("*.csv"))).head(4)
    good = json.loads(raw.to_json(orient="records"))
    bad = [
        {**good[0], "carrier": "ZZ"},
        {**good[1], "month": 13, "surprise": 1},
        {"year": 2013},
        {**good[2], "dest": "D" * 257},
    ]
    response = api.post("/v1/flights/records", json={"records": [*good[:3], *bad, good[3]]}, headers=FEEDBACK_AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 4 and [r["record"] for r in body["refused"]] == [3, 4, 5, 6]
    assert "carrier: Value error, must be one of" in body["refused"][0]["reason"]
    assert "month" in body["refused"][1]["reason"] and "surprise" in body["refused"][1]["reason"]
    assert "origin: Field required" in body["refused"][2]["reason"]
    assert "dest: String should have at most 256 characters" in body["refused"][3]["reason"]
    all_bad = api.post("/v1/flights/records", json={"records": bad}, headers=FEEDBACK_AUTH).json()
    assert all_bad["accepted"] == 0 and all_bad["file"] is None and len(all_bad["refused"]) == 4

    today = datetime.now(UTC).date()
    assert Path(body["file"]).parent.name == today.isoformat()
    manifest = json.loads(
        data_stages.ingest(data_stages.StageInput("flights", today, today + timedelta(days=1))).read_text()
    )
    assert manifest["rows_total"] == 4 and manifest["quarantined_total"] == 0


def test_ground_truth_sent_back_labels_rows_in_the_label_step(api: Any, layout: Layout) -> None:
    """Predictions whose records carry the source key get their true label from /feedback in the next label
    run: 'fill' labels a row the rule could not, 'override' also replaces the rule's label."""
    from flightplan.data import stages as data_stages
    from flightplan.prediction_log import create_store_engine, record_feedback

    from tests.support.pipeline import END_DAY, FIRST_DAY

    config, part = layout.config, layout.config.source.partition_column
    fields = list(dict.fromkeys([*request_fields(config), *config.source.key]))
    unknown = pd.read_parquet(layout.quarantine("labeled")).drop(columns=[part]).head(1)
    labeled = pd.read_parquet(layout.dataset("labeled")).drop(columns=[part])
    on_time = labeled[labeled[config.label.name] == 0].head(2)
    ids = [
        api.post("/v1/flights/predict", json=json_records(frame, fields)[0], headers=AUTH).json()["id"]
        for frame in (unknown, on_time.head(1), on_time.tail(1))
    ]
    ids, planted = ids[:2], ids[2]
    on_time = on_time.head(1)
    wrong = [{"id": ids[0], "label": "banana"}, {"id": ids[1], "label": 7}, {"id": ids[1], "label": 1}]
    refused = api.post("/v1/flights/feedback", json={"labels": wrong}, headers=FEEDBACK_AUTH)
    assert refused.status_code == 422 and [(e["loc"], e["msg"]) for e in refused.json()["detail"]] == [
        (["body", "labels", 0, "label"], "Input should be 0 or 1"),
        (["body", "labels", 1, "label"], "Input should be 0 or 1"),
    ]
    sent = api.post(
        "/v1/flights/feedback", json={"labels": [{"id": i, "label": 1} for i in ids]}, headers=FEEDBACK_AUTH
    ).json()
    assert sent["stored"] == ids
    # A bad label stored without the API's check (an older service, a hand-written row) is set aside, not used.
    engine = create_store_engine(layout.settings.predictions_db_url)
    try:
        assert record_feedback(engine, "flights", {planted: "banana"}, source="by-hand")[0] == [planted]
    finally:
        engine.dispose()

    def label_of(frame: pd.DataFrame, feedback: str) -> tuple[dict[str, Any], list[float]]:
        job = data_stages.StageInput("flights", FIRST_DAY, END_DAY, overrides={"label.feedback": feedback})
        manifest = json.loads(data_stages.label(job).read_text())
        rows = pd.read_parquet(layout.dataset("labeled")).merge(frame[config.source.key], on=config.source.key)
        return manifest, rows[config.label.name].tolist()

    try:
        baseline, _ = label_of(unknown, "ignore")
        filled, labels = label_of(unknown, "fill")
        assert labels == [1] and filled["ground_truth_matched"] == 2
        assert filled["ground_truth_set_aside"] == 1
        assert filled["ground_truth_set_aside_examples"][0]["label"] == "'banana'"
        assert filled["ground_truth_set_aside_examples"][0]["reason"] == "expected 0 or 1"
        assert filled["quarantined_total"] == baseline["quarantined_total"] - 1
        assert label_of(on_time, "fill")[1] == [0]  # the rule knew it: 'fill' keeps the rule's label
        assert label_of(on_time, "override")[1] == [1]
    finally:
        label_of(unknown, "ignore")  # the labeled data the module's other tests share, as the rule alone makes it


def test_the_service_follows_the_pipelines_folder_without_a_restart(
    champion: str,
    settings: Settings,
    layout: Layout,
    challenger: tuple[str, dict[str, str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A YAML written while the service runs is served within a poll (routes, OpenAPI, its champion); an edited
    one that no longer loads keeps serving its last good config and is named on /ready; a removed one stops."""
    import dataclasses

    import yaml
    from fastapi.testclient import TestClient
    from flightplan.serving.app import ServiceOptions, create_app

    flights = (settings.pipelines_dir / "flights.yaml").read_text()
    (tmp_path / "flights.yaml").write_text(flights)
    following = dataclasses.replace(settings, pipelines_dir=tmp_path)
    record = client_records(layout, challenger[0], 1)[0]

    def until(found: Any, what: str) -> None:
        deadline = time.monotonic() + 30
        while not found():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    app = create_app(following, ServiceOptions(None, scoped_tokens(TOKEN), poll_seconds=0.2))
    with TestClient(app) as api:
        assert "/v1/flights/predict" in api.get("/openapi.json").json()["paths"]
        assert api.post("/v1/twin/predict", json=record, headers=AUTH).status_code == 404

        twin = yaml.safe_load(flights)
        twin["name"] = "twin"
        twin.setdefault("model", {})["registered_name"] = "flights-delayed"  # the same champion, served as twin
        (tmp_path / "twin.yaml").write_text(yaml.safe_dump(twin))
        until(lambda: "/v1/twin/predict" in api.get("/openapi.json").json()["paths"], "twin's routes")
        answer = api.post("/v1/twin/predict", json=record, headers=AUTH)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["pipeline"], answer.json()["model_version"]) == ("twin", champion)
        assert api.get("/ready").json()["pipelines"]["twin"]["version"] == champion

        (tmp_path / "twin.yaml").write_text(yaml.safe_dump(twin).replace("strategy: time", "strategy: sideways"))
        until(lambda: "twin" in api.get("/ready").json()["config_errors"], "twin's config error")
        assert api.get("/ready").json()["config_errors"] == ["twin"]  # named, its reason in the log only
        assert "split.strategy" not in api.get("/ready").text
        assert any(
            "'twin' does not load" in r.getMessage() and "split.strategy" in r.getMessage() for r in caplog.records
        )
        assert api.post("/v1/twin/predict", json=record, headers=AUTH).status_code == 200  # its last good config

        (tmp_path / "twin.yaml").unlink()
        until(lambda: "/v1/twin/predict" not in api.get("/openapi.json").json()["paths"], "twin's routes gone")
        assert api.post("/v1/twin/predict", json=record, headers=AUTH).status_code == 404
        assert api.post("/v1/flights/predict", json=record, headers=AUTH).status_code == 200
        assert set(api.get("/ready").json()["pipelines"]) == {"flights"}
