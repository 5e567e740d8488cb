"""The monitoring window's parse of logged request records."""

from __future__ import annotations

import json

import pytest
from flightplan.config import load_pipeline
from flightplan.monitoring.window import parse_inputs
from flightplan.settings import PACKAGE_PIPELINES_DIR


def test_logged_records_read_whole_floats_into_int_fields_and_refuse_fractions() -> None:
    config = load_pipeline("flights", PACKAGE_PIPELINES_DIR)
    logged = [json.dumps({"sched_dep_time": 540.0, "carrier": "AA"}), json.dumps({"sched_dep_time": 541})]
    table = parse_inputs(logged, config)
    assert table.column("sched_dep_time").to_pylist() == [540, 541] and table.column("carrier")[1].as_py() is None
    with pytest.raises(ValueError, match="int field 'sched_dep_time'"):
        parse_inputs([json.dumps({"sched_dep_time": 540.5})], config)
