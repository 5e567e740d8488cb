from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flightplan.config import ConfigError, load_pipeline
from flightplan.settings import PACKAGE_PIPELINES_DIR

FLIGHTS = PACKAGE_PIPELINES_DIR / "flights.yaml"


def write_variant(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(FLIGHTS.read_text())
    change(raw)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_demo_config_loads_with_leakage_excluded() -> None:
    config = load_pipeline("flights", PACKAGE_PIPELINES_DIR)
    features = set(config.features.numeric) | set(config.features.categorical)
    assert {"dep_delay", "dep_time", "arr_time", "air_time", "arr_delay"} <= set(config.features.leakage)
    assert not features & set(config.features.leakage)
    assert config.label.rule == "arr_delay > 15"
    assert "plane_year" in config.column_names and "temp" in config.column_names


def test_overrides_apply_by_dotted_key() -> None:
    config = load_pipeline("flights", PACKAGE_PIPELINES_DIR, {"split.seed": 7, "split.strategy": "stratified"})
    assert (config.split.seed, config.split.strategy) == (7, "stratified")


def test_fingerprint_changes_with_content() -> None:
    base = load_pipeline("flights", PACKAGE_PIPELINES_DIR)
    assert base.fingerprint() == load_pipeline("flights", PACKAGE_PIPELINES_DIR).fingerprint()
    assert base.fingerprint() != load_pipeline("flights", PACKAGE_PIPELINES_DIR, {"split.seed": 1}).fingerprint()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r["source"]["columns"][4].update(type="integer"), "source.columns.4(sched_dep_time).type"),
        (lambda r: r["split"].update(shuffle=True), "split.shuffle: Extra inputs are not permitted"),
        (lambda r: r["split"]["fractions"].update(train=0.8), "fractions must add up to 1"),
        (lambda r: r["features"]["numeric"].append("dep_delay"), "['dep_delay'] are listed as leakage"),
        (lambda r: r["features"]["categorical"].append("no_such_column"), "['no_such_column'] are not columns"),
        (lambda r: r["label"].update(column="arr_delay"), "give exactly one of 'rule' or 'column'"),
        (lambda r: r["dimensions"][1].update(prefix=""), "['year'] clash with source columns"),
        (lambda r: r["source"]["columns"][1].update(min=20, max=10), "min (20.0) is greater than max (10.0)"),
        (lambda r: r.pop("label"), "label: Field required"),
        (lambda r: r["label"].update(name="origin"), "label.name: 'origin' is also a column"),
        (lambda r: r["source"].pop("time_column"), "split.strategy: time needs source.time_column"),
        (lambda r: r["label"].update(positive="yes"), "'positive' names the positive class of a binary label"),
        (lambda r: r["source"]["columns"][1].update(header="year"), "the file names ['year'] repeat"),
        (lambda r: r["source"]["columns"][1].update(name="split"), "['split'] are names the stages add to a row"),
        (
            lambda r: r["label"].update(rule="distance > 1000"),
            "['distance'] are the label or what it is computed from",
        ),
        (
            lambda r: (
                r["source"].update(snapshot={"path": "all.csv", "day": "2026-12-01"})
                or r["split"].update(window_days=30)
            ),
            "split.window_days: a snapshot is split whole",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, change, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = write_variant(tmp_path, change)
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_unknown_pipeline_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: flights"):
        load_pipeline("nope", PACKAGE_PIPELINES_DIR)


def test_not_yaml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(path)
