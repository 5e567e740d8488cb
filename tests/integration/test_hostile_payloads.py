"""Hostile request bodies against the inference API: each is refused with a 4xx that names the field and what
was expected (or the limit it broke), nothing of it reaches the prediction log, and the service keeps
answering good requests. In-process for the cheap cases; a real server process for those that could take a
process down (a deeply nested body, a huge one). The service serves the model double: what is refused is
refused before any model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flightplan.layout import Layout
from flightplan.serving.app import MAX_BATCH_ROWS, MAX_BODY_BYTES
from flightplan.settings import Settings

from tests.support.model_double import DoubleRegistry
from tests.support.service import scoped_tokens, service_process
from tests.support.serving_clients import AUTH, FEEDBACK_AUTH, TOKEN, auth_for, predictions_in_log, split_records

PREDICT, BATCH, FEEDBACK = "/v1/flights/predict", "/v1/flights/predict/batch", "/v1/flights/feedback"
JSON = {**AUTH, "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def record(layout: Layout, good_days: dict[str, dict]) -> dict[str, Any]:
    return split_records(layout, 1)[0]


@pytest.fixture(scope="module")
def api(settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient
    from flightplan.serving.app import ServiceOptions, create_app

    options = ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600)
    app = create_app(settings, options, DoubleRegistry())
    with TestClient(app) as client:
        yield client


def body(value: Any) -> bytes:
    """JSON as Python writes it, NaN and Infinity literals included (``json.dumps`` allows them)."""
    return json.dumps(value).encode()


CASES: dict[str, tuple[str, Any, dict[str, str], int, list[str]]] = {
    # name: (path, body from the record, headers, status, what the answer must say)
    "NaN literal": (PREDICT, lambda r: body({**r, "distance": float("nan")}), JSON, 422, ["distance", "finite"]),
    "Infinity literal": (PREDICT, lambda r: body({**r, "distance": float("inf")}), JSON, 422, ["distance", "finite"]),
    "-Infinity in a batch": (
        BATCH,
        lambda r: body({"records": [r, {**r, "distance": -float("inf")}]}),
        JSON,
        422,
        ['"records",1,"distance"', "finite"],
    ),
    "word for a number": (PREDICT, lambda r: body({**r, "distance": "far"}), JSON, 422, ["distance", "valid number"]),
    "number for a word": (PREDICT, lambda r: body({**r, "origin": 123}), JSON, 422, ["origin", "valid string"]),
    "a megabyte of text for a category": (
        PREDICT,
        lambda r: body({**r, "origin": "J" * 1_000_000}),
        JSON,
        422,
        ["origin", "at most 256 characters"],
    ),
    "a prediction id longer than any the log holds": (
        FEEDBACK,
        lambda r: body({"labels": [{"id": "x" * 81, "label": 1}]}),
        {**FEEDBACK_AUTH, "Content-Type": "application/json"},
        422,
        ['"labels",0,"id"', "at most 80 characters"],
    ),
    "null for a required field": (
        PREDICT,
        lambda r: body({**r, "time_hour": None}),
        JSON,
        422,
        ["time_hour", "valid datetime"],
    ),
    "unknown field beside the records": (
        BATCH,
        lambda r: body({"records": [r], "priority": "high"}),
        JSON,
        422,
        ["priority", "Extra inputs are not permitted"],
    ),
    "one record more than the limit": (
        BATCH,
        lambda r: body({"records": [r] * (MAX_BATCH_ROWS + 1)}),
        JSON,
        422,
        [f"at most {MAX_BATCH_ROWS} items"],
    ),
    "a million records": (
        BATCH,
        lambda r: b'{"records": [' + b",".join([b"{}"] * 1_000_000) + b"]}",
        JSON,
        422,
        [f"at most {MAX_BATCH_ROWS} items", "not 1000000"],
    ),
    "text/plain": (PREDICT, lambda r: body(r), {**AUTH, "Content-Type": "text/plain"}, 415, ["application/json"]),
    "form encoded, as curl -d sends": (
        BATCH,
        lambda r: body({"records": [r]}),
        {**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
        415,
        ["application/json"],
    ),
    "invalid UTF-8": (PREDICT, lambda r: b'{"origin": "JFK\xff"}', JSON, 422, ["Invalid JSON", "unicode"]),
    "empty body": (PREDICT, lambda r: b"", JSON, 422, ["Invalid JSON", "EOF"]),
    "NaN as a true label": (
        FEEDBACK,
        lambda r: body({"labels": [{"id": "any", "label": float("nan")}]}),
        {**FEEDBACK_AUTH, "Content-Type": "application/json"},
        422,
        ["label"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_body_gets_a_4xx_naming_the_field_and_logs_nothing(
    api: Any, record: dict[str, Any], settings: Settings, case: str
) -> None:
    path, make, headers, status, said = CASES[case]
    before = predictions_in_log(settings.predictions_db_url)
    answer = api.post(path, content=make(record), headers=headers)
    assert answer.status_code == status, answer.text[:500]
    text = answer.text.replace(" ", "")
    for words in said:
        assert words.replace(" ", "") in text, (words, answer.text[:500])
    assert len(answer.content) < 10_000  # one error, not one per record
    assert api.post(PREDICT, json=record, headers=AUTH).status_code == 200
    assert predictions_in_log(settings.predictions_db_url) == before + 1


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[dict[str, Any]]:
    with service_process(settings, TOKEN, poll_seconds=3600, wait_ready=True, double=True) as running:
        yield running


def test_a_deeply_nested_or_huge_body_is_refused_and_the_process_answers_on(
    server: dict[str, Any], record: dict[str, Any], settings: Settings
) -> None:
    """100,000 levels of [ (a recursive parser's stack overflow), a body over the limit declared up front and
    one streamed without a length: each is a 4xx, and the same process answers a good request after them."""
    before = predictions_in_log(settings.predictions_db_url)
    deep = b"[" * 100_000 + b"]" * 100_000
    over = MAX_BODY_BYTES + 1
    with httpx.Client(base_url=server["url"], headers=JSON, timeout=60) as http:
        for path in (PREDICT, BATCH, FEEDBACK):
            nested = http.post(path, content=deep, headers=auth_for(path))
            assert nested.status_code in (400, 422), (path, nested.text[:500])
            # pydantic-core's parser says "recursion limit exceeded"; FastAPI's (feedback) that it could not parse it.
            assert "recursion limit" in nested.text or "error parsing the body" in nested.text, nested.text[:500]
        declared = http.post(BATCH, content=b" " * over)
        assert declared.status_code == 413 and f"limit of {MAX_BODY_BYTES:,} bytes" in declared.text

        def streamed() -> Iterator[bytes]:
            for _ in range(over // (1 << 20) + 1):
                yield b" " * (1 << 20)

        chunked = http.post(FEEDBACK, content=streamed(), headers=FEEDBACK_AUTH)
        assert chunked.status_code == 413 and f"limit of {MAX_BODY_BYTES:,} bytes" in chunked.text
        assert http.post(PREDICT, json=record).status_code == 200
    assert server["process"].poll() is None
    assert predictions_in_log(settings.predictions_db_url) == before + 1
