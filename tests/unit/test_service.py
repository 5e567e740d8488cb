"""The inference API in process with the model double: routes, answers, the prediction log and the reload
rules, with no training run and no registry (tests/integration/test_serving.py serves registry models)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from flightplan.config import ColumnType, PipelineConfig, load_pipeline
from flightplan.serving.app import ServiceOptions, create_app
from flightplan.serving.inputs import request_fields
from flightplan.settings import Settings, load_settings

from tests.support.model_double import DoubleRegistry
from tests.support.service import scoped_tokens
from tests.support.serving_clients import ADMIN_AUTH, AUTH, TOKEN

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


def test_the_champion_moves_on_reload_and_a_broken_version_leaves_the_old_one_serving(
    api: TestClient, registry: DoubleRegistry, config: PipelineConfig
) -> None:
    record = full_record(config)
    registry.champions["flights"], registry.broken = "3", {"3"}
    refused = api.post("/admin/reload", headers=ADMIN_AUTH).json()
    assert refused == [{"pipeline": "flights", "before": "1", "serving": "1", "error": refused[0]["error"]}]
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
    engine = sa.create_engine(settings.predictions_db_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("select count(*) from predictions")).scalar_one() == 0
    engine.dispose()
