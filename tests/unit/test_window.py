"""The parse of logged request records into the columns of a log segment."""

from __future__ import annotations

import json

import pytest
from flightplan.config import load_pipeline
from flightplan.prediction_log import parse_records, record_schema
from flightplan.settings import PACKAGE_PIPELINES_DIR


def test_logged_records_read_whole_floats_into_int_fields_and_refuse_fractions() -> None:
    config = load_pipeline("flights", PACKAGE_PIPELINES_DIR)
    logged = [json.dumps({"sched_dep_time": 540.0, "carrier": "AA"}), json.dumps({"sched_dep_time": 541})]
    table = parse_records(logged, record_schema(config))
    assert table.column("sched_dep_time").to_pylist() == [540, 541] and table.column("carrier")[1].as_py() is None
    with pytest.raises(ValueError, match="field 'sched_dep_time' holds a value that is not int64"):
        parse_records([json.dumps({"sched_dep_time": 540.5})], record_schema(config))


def test_logged_answers_and_labels_decode_to_the_values_pandas_would_hold() -> None:
    import math

    import pyarrow as pa
    from flightplan.monitoring.window import decoded_values

    def decoded(texts: list[str | None]) -> list[object]:
        return list(decoded_values(pa.chunked_array([texts[:2], texts[2:]], pa.string())))

    assert decoded(["0", "1", "1"]) == [0, 1, 1]
    with_gap = decoded(["1", None, "0"])
    assert with_gap[0] == 1.0 and math.isnan(with_gap[1]) and with_gap[2] == 0.0  # type: ignore[arg-type]
    assert decoded(["1.5", "2", "-3e2"]) == [1.5, 2.0, -300.0]
    assert decoded(['"Adelie"', None, '"Gentoo"']) == ["Adelie", None, "Gentoo"]
    assert decoded(["true", "false", None]) == [True, False, None]
