"""What keeps a stage on Spark when its batch is small enough for the local engine: the parts of a pipeline the
local engine does not do as Spark does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from flightplan.config import PipelineConfig, load_pipeline
from flightplan.data import label, split, wrangle
from flightplan.settings import PACKAGE_PIPELINES_DIR


def flights(tmp_path: Path, change: Any) -> PipelineConfig:
    """The demo pipeline with ``change`` applied to its YAML."""
    pipeline = yaml.safe_load((PACKAGE_PIPELINES_DIR / "flights.yaml").read_text())
    change(pipeline)
    (tmp_path / "flights.yaml").write_text(yaml.safe_dump(pipeline))
    return load_pipeline("flights", tmp_path)


def test_the_demo_pipeline_runs_locally(tmp_path: Path) -> None:
    config = flights(tmp_path, lambda _pipeline: None)
    assert wrangle.local_refusal(config) is None and label.local_refusal(config, []) is None
    assert split.local_refusal(config) is None


def test_a_time_split_on_a_column_of_days_stays_on_spark(tmp_path: Path) -> None:
    """Spark casts the time column to seconds for its cuts: only a timestamp's seconds are done locally."""

    def days_as_time(pipeline: dict[str, Any]) -> None:
        pipeline["source"]["columns"].append({"name": "day_of_flight", "type": "date"})
        pipeline["source"]["time_column"] = "day_of_flight"

    refusal = split.local_refusal(flights(tmp_path, days_as_time))
    assert refusal == "a time split on day_of_flight, a date column"


def test_a_double_in_the_key_or_a_median_of_a_timestamp_stays_on_spark(tmp_path: Path) -> None:
    def double_key(pipeline: dict[str, Any]) -> None:
        pipeline["source"]["key"] = ["flight", "distance"]

    refusal = wrangle.local_refusal(flights(tmp_path, double_key))
    assert refusal is not None and "['distance']" in refusal

    def timestamp_mode(pipeline: dict[str, Any]) -> None:
        pipeline["wrangle"]["impute"]["time_hour"] = {"strategy": "mode"}

    refusal = wrangle.local_refusal(flights(tmp_path, timestamp_mode))
    assert refusal is not None and "['time_hour']" in refusal


def test_ground_truth_spark_casts_its_own_way_or_a_rule_beyond_the_evaluator_stays_on_spark(tmp_path: Path) -> None:
    """Key parts and labels sent back as integers, booleans or plain text are cast locally as Spark casts them; a
    time in the key is left to Spark."""
    config = flights(tmp_path, lambda _pipeline: None)
    key = {"year": 2013, "month": 1, "day": 1, "carrier": "UA", "flight": 1545, "origin": "EWR", "sched_dep_time": 515}
    sent = [{**key, "label": 1}, {**key, "year": " 2013", "label": True}, {**key, "month": "1.0", "label": "0"}]
    assert label.local_refusal(config, sent) is None

    def time_in_key(pipeline: dict[str, Any]) -> None:
        pipeline["source"]["key"].append("time_hour")

    refusal = label.local_refusal(
        flights(tmp_path, time_in_key), [{**key, "time_hour": "2013-01-01 05:00:00", "label": 1}]
    )
    assert refusal is not None and refusal.startswith("a label sent back: '2013-01-01 05:00:00' as timestamp")

    def function_rule(pipeline: dict[str, Any]) -> None:
        pipeline["label"]["rule"] = "abs(arr_delay) > 15"

    refusal = label.local_refusal(flights(tmp_path, function_rule), [])
    assert refusal is not None and refusal.startswith("the label rule: function ABS")
