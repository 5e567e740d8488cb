"""`flightplan init` on small files written here: type and task inference, what is left out of the features,
the drafted rules, and the errors for data that cannot become a pipeline."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from flightplan.config import DEFAULT_NULL_VALUES, ColumnSpec, ConfigError, load_pipeline
from flightplan.data.parse import convert
from flightplan.features import Feature, FeatureMap, leaking_features
from flightplan.scaffold import InitError, config_names, draft, infer_task, profile_column

DAY = date(2026, 12, 1)


def profiled(values: list, name: str = "c") -> tuple[str, str | None]:
    column = profile_column(pa.chunked_array([pa.array(values)]), name, name)
    return column.type, column.format


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1", "2", " 3 ", None], ("int", None)),
        (["1", "9000000000"], ("long", None)),
        (["1.5", "2", "-3e2", ""], ("double", None)),
        (["true", "False", "T"], ("boolean", None)),
        (["2013-01-01", "2013-12-31"], ("date", "%Y-%m-%d")),
        (["2013-01-01 05:00:00", "2013-01-02 06:30:00"], ("timestamp", "%Y-%m-%d %H:%M:%S")),
        (["2013-01-01T05:00:00+0000"], ("timestamp", "%Y-%m-%dT%H:%M:%S%z")),
        (["Yes", "No"], ("string", None)),  # a label's words stay text: "yes" is not a boolean to a reader
        (["1", "x"], ("string", None)),
        ([None, None], ("string", None)),
    ],
)
def test_column_types_are_inferred_from_text_as_ingestion_parses_them(values: list, expected: tuple) -> None:
    """The type init drafts is one ingestion reads every value of the column as, none quarantined, with as many
    present values as init counted: inference is at most as wide as parsing, never wider."""
    assert profiled(values) == expected
    column_type, column_format = expected
    raw = pa.array([None if value is None else str(value) for value in values], pa.string())
    spec = ColumnSpec(name="c", type=column_type, format=column_format)
    parsed, failed = convert(raw, spec, pa.array(DEFAULT_NULL_VALUES, pa.string()))
    assert failed is None, (values, spec)
    profile = profile_column(pa.chunked_array([raw]), "c", "c")
    assert parsed.null_count == profile.nulls, (values, parsed)


def test_a_missing_boolean_stays_missing() -> None:
    column = profile_column(pa.chunked_array([pa.array(["true", "", None, "false"])]), "late", "late")
    assert (column.type, column.nulls, column.distinct) == ("boolean", 2, 2)


def test_stored_parquet_types_are_kept() -> None:
    assert profiled([1, 2]) == ("int", None)
    assert profiled([1.0, None]) == ("double", None)
    assert profiled([True, False]) == ("boolean", None)


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["Yes", "No", "No"], "binary"),
        (["0", "1"], "binary"),
        (["a", "b", "c"], "multiclass"),
        (["3", "4", "5", "6"], "multiclass"),  # a few integers: classes (ratings, kinds)
        ([str(i) for i in range(50)], "regression"),
        (["1.5", "2.5", "3.5"], "regression"),
    ],
)
def test_the_task_follows_the_target(values: list, task: str) -> None:
    assert infer_task(profile_column(pa.chunked_array([pa.array(values)]), "t", "t")) == task


def test_headers_become_identifiers_without_clashes() -> None:
    names = config_names(["Sepal.Length", "Sepal Length", "Income", "2nd", "split", "ds"])
    assert names == {
        "Sepal.Length": "Sepal_Length",
        "Sepal Length": "Sepal_Length_2",
        "Income": "Income",
        "2nd": "c_2nd",
        "split": "split_2",
        "ds": "ds_2",
    }


@pytest.fixture
def credit(tmp_path: Path) -> Path:
    rows = 200
    frame = pd.DataFrame(
        {
            "Customer ID": [f"C{i:04d}" for i in range(rows)],
            "Monthly.Income": [1000.0 + 37 * i if i % 10 else None for i in range(rows)],
            "Region": ["north", "south", "east", "west"] * (rows // 4),
            "Branch": ["main"] * rows,
            "Notes": [f"called on day {i}" for i in range(rows)],
            "Opened": [f"2020-01-{1 + i % 28:02d}" for i in range(rows)],
            "Default": ["bad" if i % 5 == 0 else "good" for i in range(rows)],
        }
    )
    path = tmp_path / "credit.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_draft_reads_back_as_a_valid_pipeline(credit: Path, tmp_path: Path) -> None:
    drafted = draft(credit, "Default", "credit", tmp_path / "pipelines" / "credit.yaml", today=DAY)
    config = load_pipeline(drafted.path)
    assert config == drafted.config
    assert config.source.snapshot is not None and config.source.snapshot.day == DAY
    assert (config.label.task, config.label.column, config.label.positive) == ("binary", "Default", "bad")
    assert config.label.name == "default_is_bad" and config.split.strategy == "stratified"
    assert config.source.key == ["Customer_ID"]
    income = config.column("Monthly_Income")
    assert (income.header, income.type, income.max_null_fraction) == ("Monthly.Income", "double", 0.15)
    assert income.min is not None and income.max is not None and income.min <= 1037 and income.max >= 1000 + 37 * 199
    assert config.column("Region").allowed == ["east", "north", "south", "west"]
    assert config.features.numeric == ["Monthly_Income"] and config.features.categorical == ["Region"]
    assert [d.name for d in config.features.derived] == ["Opened_day_of_week", "Opened_month"]
    assert drafted.excluded == {
        "Default": "the target",
        "Customer_ID": "identifier: every row has its own value",
        "Branch": "constant: every row holds 'main'",
        "Notes": "free text: 200 distinct values in 200 rows",
        "Opened": "a time: its parts (hour, weekday, month) are derived features instead",
    }
    # The reasons are in the file, for the person reviewing it.
    assert "#   Branch: constant: every row holds 'main'" in drafted.text
    assert config.model.acceptance.minimum == {"roc_auc": 0.6}


def test_a_named_time_column_gives_a_time_split(credit: Path, tmp_path: Path) -> None:
    drafted = draft(credit, "Default", "credit", tmp_path / "c.yaml", time_column="Opened", today=DAY)
    assert drafted.config.split.strategy == "time" and drafted.config.source.time_column == "Opened"


def test_the_task_can_be_overridden(credit: Path, tmp_path: Path) -> None:
    with pytest.raises(InitError, match="regression needs numbers"):
        draft(credit, "Default", "credit", tmp_path / "c.yaml", task="regression")


def test_a_multiclass_gate_must_beat_the_most_frequent_class(tmp_path: Path) -> None:
    path = tmp_path / "kinds.parquet"
    pd.DataFrame({"x": [i / 2 for i in range(100)], "kind": ["a"] * 60 + ["b"] * 30 + ["c"] * 10}).to_parquet(path)
    config = draft(path, "kind", "kinds", tmp_path / "kinds.yaml").config
    assert config.source.format == "parquet" and config.label.task == "multiclass"
    assert config.model.acceptance.minimum == {"accuracy": 0.61}


@pytest.mark.parametrize(
    ("content", "target", "message"),
    [
        (b"", "y", "is empty: expected a header line and rows"),
        (b"x,y\n", "y", "has a header but no rows"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "y", "not a UTF-8 CSV file: byte 0x89 at column 1"),
        (b"x,y\x00\n1,2\n", "y", "its first line holds NUL bytes"),
        (b"x,y\n1,caf\xe9\n", "y", "is not a table with delimiter ','.*invalid UTF8"),
        (b"x;y\n1;2\n", "y", "found 1 column"),
        (b"x,y\n1,2\n3,4\n", "z", "target 'z' is not a column of .*; its columns are \\['x', 'y'\\]"),
        (b"x,y\n1,a\n2,a\n", "y", "target 'y' has one value \\('a'\\) in its 2 rows"),
        (b"x,y\n1,\n2,\n", "y", "target 'y' is always missing"),
        (b"x,y\n1,2\n3\n", "y", "is not a table with delimiter ','"),
    ],
)
def test_data_that_cannot_be_a_pipeline_is_refused_clearly(
    tmp_path: Path, content: bytes, target: str, message: str
) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(InitError, match=message):
        draft(path, target, "data", tmp_path / "data.yaml")
    assert not (tmp_path / "data.yaml").exists()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InitError, match=r"nowhere\.csv does not exist"):
        draft(tmp_path / "nowhere.csv", "y", "data", tmp_path / "data.yaml")


def test_the_label_and_what_it_is_computed_from_cannot_be_features(credit: Path, tmp_path: Path) -> None:
    drafted = draft(credit, "Default", "credit", tmp_path / "credit.yaml", today=DAY)
    text = drafted.text.replace("categorical: [Region]", "categorical: [Region, Default]")
    (tmp_path / "leaky.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"\['Default'\] are the label or what it is computed from"):
        load_pipeline(tmp_path / "leaky.yaml")


def test_a_feature_identical_to_the_label_under_another_name_is_found() -> None:
    train = pd.DataFrame(
        {"copy": ["y", "n", "y", "n"], "noise": ["a", "a", "b", "b"], "amount": [1.0, 2, 3, 4], "label": [1, 0, 1, 0]}
    )
    features = [Feature("copy", "categorical"), Feature("noise", "categorical"), Feature("amount", "numeric")]
    assert leaking_features(train, FeatureMap(features, "label", "binary")) == ["copy"]
    regression = train.assign(label=[1.0, 2, 3, 4])
    assert leaking_features(regression, FeatureMap(features, "label", "regression")) == ["amount"]


def test_a_column_that_alone_determines_the_target_is_left_out_as_a_suspected_leak(tmp_path: Path) -> None:
    rows = 200
    default = ["bad" if i % 5 == 0 else "good" for i in range(rows)]
    frame = pd.DataFrame(
        {
            "Region": ["north", "south", "east", "west"] * (rows // 4),
            "Collection": [f"agency{i % 3}" if d == "bad" else "none" for i, d in enumerate(default)],
            "Income": [1000.0 + (i * 7919) % 613 for i in range(rows)],
            "Default": default,
        }
    )
    frame.to_csv(tmp_path / "credit.csv", index=False)
    drafted = draft(tmp_path / "credit.csv", "Default", "credit", tmp_path / "credit.yaml", today=DAY)
    assert drafted.excluded["Collection"].startswith("suspected leak: each of its 4 values goes with one class")
    assert "Region" not in drafted.excluded and "Income" not in drafted.excluded
    assert "#   Collection: suspected leak" in drafted.text

    frame = pd.DataFrame({"size": [float(i % 37) for i in range(rows)], "price": [3.0 * i + 1 for i in range(rows)]})
    frame["price_eur"] = frame["price"] * 0.93
    frame.to_csv(tmp_path / "prices.csv", index=False)
    drafted = draft(tmp_path / "prices.csv", "price", "prices", tmp_path / "prices.yaml", today=DAY)
    assert drafted.excluded["price_eur"].startswith("suspected leak: correlation 1.0000 with the target")
    assert "size" not in drafted.excluded
