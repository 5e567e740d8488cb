"""The inference API in process with the model double: routes, answers, the prediction log and the reload
rules, with no training run and no registry (tests/integration/test_serving.py serves registry models)."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from flightplan.config import ColumnType, PipelineConfig, load_pipeline
from flightplan.serving.app import ServiceOptions, create_app
from flightplan.serving.inputs import request_fields
from flightplan.serving.models import ServedModel
from flightplan.settings import Settings, load_settings

import tests.support.model_double
from tests.support.model_double import DoubleRegistry, model_double
from tests.support.service import scoped_tokens
from tests.support.serving_clients import ADMIN_AUTH, AUTH, FEEDBACK_AUTH, TOKEN

JSON = {**AUTH, "Content-Type": "application/json"}
SAMPLE_VALUES: dict[ColumnType, Any] = {
    "string": "a value no model saw",
    "int": 7,
    "long": 7,
    "double": 2.5,
    "boolean": True,
    "date": "2024-03-05",
    "timestamp": "2024-03-05T06:30:00+00:00",
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"FLIGHTPLAN_HOME": str(tmp_path)})


@pytest.fixture
def config(settings: Settings) -> PipelineConfig:
    return load_pipeline("flights", settings.pipelines_dir)


@pytest.fixture
def registry() -> DoubleRegistry:
    return DoubleRegistry()


@pytest.fixture
def api(settings: Settings, registry: DoubleRegistry) -> Iterator[TestClient]:
    options = ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600)
    with TestClient(create_app(settings, options, registry)) as client:
        yield client


def rows_in_log(settings: Settings) -> int:
    engine = sa.create_engine(settings.predictions_db_url)
    with engine.connect() as connection:
        rows = int(connection.execute(sa.text("select count(*) from predictions")).scalar_one())
    engine.dispose()
    return rows


def full_record(config: PipelineConfig) -> dict[str, Any]:
    """A value of its type for every field of a request."""
    return {name: SAMPLE_VALUES[kind] for name, kind in request_fields(config).items()}


def logged(settings: Settings, request_id: str) -> list[tuple[str, str, float]]:
    """(id, model version, probability) of the log's rows of one request."""
    engine = sa.create_engine(settings.predictions_db_url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("select id, model_version, probability from predictions where request_id = :r order by id"),
            {"r": request_id},
        ).all()
    engine.dispose()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_each_row_gets_its_own_answer_and_id_and_is_logged(
    api: TestClient, settings: Settings, config: PipelineConfig
) -> None:
    """Every category of the record is unseen by the double, so its P(1) is the share of numeric features; a
    record with one numeric input left out has one feature fewer present."""
    record = full_record(config)
    features = len(config.features.numeric) + len(config.features.derived) + len(config.features.categorical)
    numeric_input = next(name for name in config.features.numeric if name in record)
    sparse = {name: value for name, value in record.items() if name != numeric_input}
    answer = api.post("/v1/flights/predict/batch", json={"records": [record, sparse, record]}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    numeric = len(config.features.numeric) + len(config.features.derived)
    expected = [numeric / features, (numeric - 1) / features, numeric / features]
    probabilities = [row["probability"] for row in body["predictions"]]
    assert np.allclose(probabilities, expected), (probabilities, expected)
    assert [row["prediction"] for row in body["predictions"]] == [int(p >= 0.5) for p in expected]
    ids = [f"{body['request_id']}-{row}" for row in range(3)]
    assert [row["id"] for row in body["predictions"]] == ids and body["model_version"] == "1"
    assert logged(settings, body["request_id"]) == [
        (i, "1", pytest.approx(p)) for i, p in zip(ids, expected, strict=True)
    ]


def test_a_large_batch_is_logged_as_columns_and_read_back_as_sent(
    api: TestClient, settings: Settings, config: PipelineConfig
) -> None:
    """A request of COLUMNAR_ROWS records or more becomes a segment of its own (no row of text): its ids take
    feedback, and the monitoring window reads its records back as they were sent."""
    from datetime import UTC, datetime, timedelta

    from flightplan.prediction_log import answered_table, record_schema
    from flightplan.serving.app import COLUMNAR_ROWS

    record = full_record(config)
    moment = next(name for name, kind in request_fields(config).items() if kind == "timestamp")
    text = next(name for name, kind in request_fields(config).items() if kind == "string")
    records = [{**record, text: f"</script><b>{row}"} for row in range(COLUMNAR_ROWS)]
    records[1] = {name: value for name, value in record.items() if name != text}
    started = datetime.now(UTC)
    body = api.post("/v1/flights/predict/batch", json={"records": records}, headers=AUTH).json()
    assert rows_in_log(settings) == 0 and logged(settings, body["request_id"]) == []
    last = f"{body['request_id']}-{COLUMNAR_ROWS - 1}"
    labels = [{"id": last, "label": 1}, {"id": f"{body['request_id']}-{COLUMNAR_ROWS}", "label": 1}]
    sent = api.post("/v1/flights/feedback", json={"labels": labels}, headers=FEEDBACK_AUTH).json()
    assert (sent["stored"], sent["unknown"]) == ([last], [labels[1]["id"]]), sent

    window = answered_table(
        settings.predictions_db_url, "flights", started, datetime.now(UTC) + timedelta(seconds=1), record_schema(config)
    ).to_pylist()
    assert [row[text] for row in window] == [records[row].get(text) for row in range(COLUMNAR_ROWS)]
    assert {row[moment].isoformat() for row in window} == {record[moment]}
    assert [row["log.probability"] for row in window] == [a["probability"] for a in body["predictions"]]
    assert [row["log.label"] for row in window] == [None] * (COLUMNAR_ROWS - 1) + ["1"]
    # An id that only looks like a row number of that request is unknown, not an error.
    odd = [{"id": f"{body['request_id']}-{row}", "label": 1} for row in ("²", "01", "-1", "")]
    answer = api.post("/v1/flights/feedback", json={"labels": odd}, headers=FEEDBACK_AUTH)
    assert answer.status_code == 200 and answer.json()["unknown"] == [label["id"] for label in odd], answer.text


def test_moments_read_as_pydantic_reads_them_hold_nothing_the_collector_tracks(config: PipelineConfig) -> None:
    """The records of a 1000-row request stay alive while it is served and while the shadow waits to answer them:
    their moments must not each hold an object the cyclic collector walks at every full collection."""
    from datetime import datetime

    from flightplan.serving.inputs import python_type
    from pydantic import TypeAdapter, ValidationError

    moment_type: Any = python_type("timestamp", config)
    ours: TypeAdapter[list[datetime]] = TypeAdapter(list[moment_type])
    pydantics = TypeAdapter(list[datetime])
    texts = ["2024-03-05T06:30:00+00:00", "2024-03-05T01:30:00.25-05:00", "2024-03-05 06:30:00Z", "2024-03-05T06:30"]
    sent = [*texts, "2024-03-05", "1709620200", 1709620200, "20240305"]
    read = ours.validate_python(sent)
    assert [(moment, moment.utcoffset()) for moment in read] == [
        (moment, moment.utcoffset()) for moment in pydantics.validate_python(sent)
    ]
    assert not any(gc.is_tracked(moment.tzinfo) for moment in read[: len(texts)])
    for refused in ("2024-13-05T06:30:00", "2024-03-05T25:00", " 2024-03-05", "2024-W10-2", "soon"):
        with pytest.raises(ValidationError, match="datetime"):
            ours.validate_python([refused])


def test_a_large_batch_whose_values_do_not_fit_columns_is_logged_as_text(
    api: TestClient, settings: Settings, config: PipelineConfig
) -> None:
    from flightplan.serving.app import COLUMNAR_ROWS

    record = full_record(config)
    field = next(name for name, kind in request_fields(config).items() if kind in ("int", "long"))
    records = [record] * (COLUMNAR_ROWS - 1) + [{**record, field: 2**63}]
    body = api.post("/v1/flights/predict/batch", json={"records": records}, headers=AUTH).json()
    assert len(logged(settings, body["request_id"])) == COLUMNAR_ROWS == rows_in_log(settings), body


def posted_at_once(
    settings: Settings, registry: DoubleRegistry, records: list[dict[str, Any]]
) -> tuple[list[httpx.Response], str]:
    """Each record sent to /predict by a client of its own, all at once on the service's event loop; the answers
    and then the service's metrics."""
    app = create_app(settings, ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600), registry)

    async def clients() -> tuple[list[httpx.Response], str]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=AUTH) as client:
                answers = await asyncio.gather(*(client.post("/v1/flights/predict", json=body) for body in records))
                return list(answers), (await client.get("/metrics")).text

    return asyncio.run(clients())


def test_concurrent_single_records_are_batched_and_each_client_gets_its_own_answer(
    settings: Settings, registry: DoubleRegistry, config: PipelineConfig
) -> None:
    """200 clients at once, odd ones leaving a numeric input out (one feature fewer present for the double),
    each marking its record with its number: every client gets the answer of its own record under its own
    id, the log holds each under that id with the client's inputs, and fewer model calls than requests ran."""
    record = full_record(config)
    features = len(config.features.numeric) + len(config.features.derived) + len(config.features.categorical)
    numeric = len(config.features.numeric) + len(config.features.derived)
    left_out, marker = [name for name in config.features.numeric if name in record][:2]
    sent = [
        {name: value for name, value in {**record, marker: client}.items() if client % 2 == 0 or name != left_out}
        for client in range(200)
    ]
    responses, metrics = posted_at_once(settings, registry, sent)
    answers = [response.json() for response in responses]
    expected = [(numeric - client % 2) / features for client in range(200)]
    assert [answer["probability"] for answer in answers] == pytest.approx(expected)
    ids = [answer["id"] for answer in answers]
    assert len(set(ids)) == 200 and all(answer["request_id"] == answer["id"] for answer in answers)
    engine = sa.create_engine(settings.predictions_db_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("select id, inputs, probability, model_version from predictions")).all()
    engine.dispose()
    by_id = {row[0]: row[1:] for row in rows}
    for client, (answer_id, probability) in enumerate(zip(ids, expected, strict=True)):
        inputs, logged_probability, version = by_id[answer_id]
        assert json.loads(inputs)[marker] == client and (left_out in json.loads(inputs)) == (client % 2 == 0)
        assert (logged_probability, version) == (pytest.approx(probability), "1")
    calls = re.search(r'flightplan_model_call_rows_count\{pipeline="flights"\} (\S+)', metrics)
    assert calls is not None and float(calls[1]) < 200, metrics


def test_a_record_that_cannot_be_encoded_fails_only_its_own_request_among_those_batched(
    settings: Settings, registry: DoubleRegistry, config: PipelineConfig
) -> None:
    record = full_record(config)
    moment = next(name for name, kind in request_fields(config).items() if kind == "timestamp")
    sent = [record, {**record, moment: "0001-01-01T00:00:00+00:00"}, record]
    (first, refused, last), metrics = posted_at_once(settings, registry, sent)
    assert (first.status_code, refused.status_code, last.status_code) == (200, 422, 200), refused.text
    assert f"record 0: {moment}=0001-01-01T00:00:00" in refused.json()["detail"]
    # The two answered records were then predicted one by one: two model calls of one row each.
    assert 'flightplan_model_call_rows_count{pipeline="flights"} 2.0' in metrics, metrics
    assert 'flightplan_model_call_rows_sum{pipeline="flights"} 2.0' in metrics, metrics
    engine = sa.create_engine(settings.predictions_db_url)
    with engine.connect() as connection:
        logged_ids = set(connection.scalars(sa.text("select id from predictions")))
    engine.dispose()
    assert logged_ids == {first.json()["id"], last.json()["id"]}


def test_the_champion_moves_on_reload_and_a_broken_version_leaves_the_old_one_serving(
    api: TestClient, registry: DoubleRegistry, config: PipelineConfig
) -> None:
    record = full_record(config)
    registry.champions["flights"], registry.broken = "3", {"3"}
    refused = api.post("/admin/reload", headers=ADMIN_AUTH).json()
    assert refused == [
        {"pipeline": "flights", "alias": "champion", "before": "1", "serving": "1", "error": refused[0]["error"]}
    ]
    assert "version 3" in refused[0]["error"]
    assert api.get("/ready").json()["pipelines"]["flights"] == {
        "model": config.registered_model,
        "version": "1",
        "refused_version": "3",
    }
    assert api.post("/v1/flights/predict", json=record, headers=AUTH).json()["model_version"] == "1"
    registry.champions["flights"] = "4"
    assert api.post("/admin/reload", headers=ADMIN_AUTH).json()[0]["serving"] == "4"
    assert api.post("/v1/flights/predict", json=record, headers=AUTH).json()["model_version"] == "4"


def test_a_replaced_champion_is_freed_although_the_heap_is_frozen(
    settings: Settings, registry: DoubleRegistry, config: PipelineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: dict[str, weakref.ref[ServedModel]] = {}

    def watched(config: PipelineConfig, version: str, classes: list[str] | None = None) -> ServedModel:
        model = model_double(config, version, classes)
        loaded[version] = weakref.ref(model)
        cycle: list[Any] = [model]
        cycle.append(cycle)  # as a real model's objects can: only the cyclic collector frees it once replaced
        return model

    monkeypatch.setattr(tests.support.model_double, "model_double", watched)
    options = ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600)
    with TestClient(create_app(settings, options, registry)) as api:
        assert gc.get_freeze_count() > 0  # the service froze what it holds once its models were loaded
        registry.champions["flights"] = "2"
        assert api.post("/admin/reload", headers=ADMIN_AUTH).json()[0]["serving"] == "2"
        assert loaded["1"]() is None
        assert api.post("/v1/flights/predict", json=full_record(config), headers=AUTH).json()["model_version"] == "2"


def test_without_a_champion_the_service_is_not_ready_and_refuses_predictions(
    settings: Settings, config: PipelineConfig
) -> None:
    options = ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600)
    with TestClient(create_app(settings, options, DoubleRegistry(champions={"flights": None}))) as api:
        ready = api.get("/ready")
        assert ready.status_code == 503 and ready.json()["pipelines"]["flights"]["version"] is None
        answer = api.post("/v1/flights/predict", json=full_record(config), headers=AUTH)
        assert answer.status_code == 503 and "no champion" in answer.text


def mlflow_bodies(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The same records in each of MLflow's request formats; the split one as MLflow itself writes a serving
    input from a data frame (missing values as NaN)."""
    from mlflow.models import convert_input_example_to_serving_input

    frame = pd.DataFrame(records)
    names = list(frame.columns)
    serving_input = convert_input_example_to_serving_input(frame)
    assert serving_input is not None
    return {
        "dataframe_split": json.loads(serving_input),
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs as columns": {"inputs": {name: [record.get(name) for record in records] for name in names}},
        "inputs as records": {"inputs": records},
    }


def test_mlflow_request_formats_get_the_typed_routes_answers(
    api: TestClient, settings: Settings, config: PipelineConfig
) -> None:
    record = full_record(config)
    numeric_input = next(name for name in config.features.numeric if name in record)
    records = [record, {**record, numeric_input: None}, record]
    typed = api.post("/v1/flights/predict/batch", json={"records": records}, headers=AUTH).json()["predictions"]
    for form, body in mlflow_bodies(records).items():
        answer = api.post("/v1/flights/invocations", content=json.dumps(body), headers=JSON)  # NaN included
        assert answer.status_code == 200, (form, answer.text)
        served = answer.json()
        assert served["predictions"] == [row["prediction"] for row in typed], form
        assert served["probabilities"] == [row["probability"] for row in typed], form
        assert [row[1] for row in logged(settings, served["request_id"])] == ["1"] * 3, form
        assert served["ids"] == [f"{served['request_id']}-{row}" for row in range(3)], form
    # MLflow's CSV body, as pandas writes a frame (the missing value an empty field, the int columns with it floats)
    header, *lines = pd.DataFrame(records).to_csv(index=False).splitlines()
    csv = "\n".join([header, lines[0], "", *lines[1:], ""])  # a blank line is skipped, as pandas skips it
    served = api.post("/v1/flights/invocations", content=csv, headers={**AUTH, "Content-Type": "text/csv"}).json()
    assert served["probabilities"] == [row["probability"] for row in typed], served


@pytest.mark.parametrize(
    ("body", "content_type", "status", "said"),
    [
        (lambda frame: frame.assign(colour="red").to_csv(index=False), "text/csv", 422, '"csv","colour"'),
        (lambda frame: frame.to_csv(index=False) + "1,2\n", "text/csv", 422, "row 2 has 2 values"),
        (lambda frame: frame.assign(distance="far").to_csv(index=False), "text/csv", 422, '"csv","distance",0'),
        (lambda frame: frame.to_csv(index=False).encode("utf-16"), "text/csv", 422, "not UTF-8"),
        (lambda frame: 'a,b\n"1,2\n', "text/csv", 422, "not a CSV: unexpected end of data"),
        (lambda frame: "\n".join(["a", *["1"] * 10_001]), "text/csv", 422, "1 to 10,000 rows, not more than"),
        (lambda frame: frame.to_csv(index=False).replace(",time_hour", ",carrier"), "text/csv", 422, "['carrier']"),
        (lambda frame: frame.head(0).to_csv(index=False), "text/csv", 422, "expected 1 to 10,000 rows, not 0"),
        (lambda frame: "", "text/csv", 422, "expected a header line"),
        (lambda frame: frame.to_csv(index=False), "text/plain", 415, "'application/json' or 'text/csv'"),
    ],
)
def test_a_bad_csv_body_is_refused_naming_the_field_and_row_and_logs_nothing(
    api: TestClient, settings: Settings, config: PipelineConfig, body: Any, content_type: str, status: int, said: str
) -> None:
    frame = pd.DataFrame([full_record(config)] * 2)
    answer = api.post("/v1/flights/invocations", content=body(frame), headers={**AUTH, "Content-Type": content_type})
    assert answer.status_code == status, answer.text
    assert said in answer.text or said in answer.text.replace(" ", ""), answer.text
    assert rows_in_log(settings) == 0


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (lambda r: {"dataframe_records": [r], "instances": [r]}, "exactly one of"),
        (lambda r: {"dataframe_records": [r], "params": {"threshold": 0.2}}, "takes no params"),
        (lambda r: {"dataframe_records": [{**r, "colour": "red"}]}, '"dataframe_records","colour"'),
        (lambda r: {"dataframe_split": {"columns": list(r), "data": [list(r.values())[:-1]]}}, "row 0 has"),
        (lambda r: {"inputs": {name: [value, value] for name, value in r.items()} | {"x": [1]}}, "one length"),
        (lambda r: {"instances": [r, {**r, "distance": "far"}]}, '"instances","distance",1'),
        (lambda r: {"dataframe_records": [r, {**r, "distance": float("inf")}]}, '"distance",1'),
        (lambda r: {"dataframe_records": [r, {**r, "time_hour": None}]}, '"time_hour",1'),
        (lambda r: {"dataframe_records": []}, "expected 1 to 10,000 rows, not 0"),
        (lambda r: [r], "expected a JSON object"),
    ],
)
def test_a_bad_mlflow_body_is_refused_naming_the_field_and_row_and_logs_nothing(
    api: TestClient, settings: Settings, config: PipelineConfig, body: Any, said: str
) -> None:
    answer = api.post("/v1/flights/invocations", content=json.dumps(body(full_record(config))), headers=JSON)
    assert answer.status_code == 422, answer.text
    assert said in answer.text or said in answer.text.replace(" ", ""), answer.text
    assert rows_in_log(settings) == 0
