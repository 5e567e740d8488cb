"""The data-engineering stages on real days of the demo data and on bad landing files, with real Spark,
Great Expectations and MLflow (no Airflow here)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
from flightplan.data import stages as data_stages
from flightplan.layout import Layout

from tests.support.pipeline import END_DAY, FIRST_DAY

BAD_DAY, AFTER_BAD_DAY = date(2013, 1, 20), date(2013, 1, 21)


def data_lines(path: Path) -> int:
    """Lines after the header that are not blank: the records a file offers."""
    lines = path.read_bytes().split(b"\n")[1:]
    return sum(1 for line in lines if line.strip())


def dataset_rows(root: Path, day: date) -> list[dict]:
    folder = root / f"ds={day.isoformat()}"
    if not folder.exists():
        return []
    rows = pads.dataset(str(folder)).to_table().to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


@pytest.fixture(scope="module")
def bad_landing(layout: Layout, replayed: dict[str, int]) -> Path:
    """A day of landing files with every kind of bad input, built from real rows."""
    good = (layout.landing / FIRST_DAY.isoformat()).glob("*.csv").__next__().read_text().splitlines()
    header, rows = good[0], good[1:]
    folder = layout.landing / BAD_DAY.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    columns = header.split(",")
    delay = columns.index("dep_delay")
    wrong_type = rows[5].split(",")
    wrong_type[delay] = "soon"
    (folder / "a-mixed.csv").write_text(
        "\n".join([header, *rows[:5], "2013,1,1,517", ",".join(wrong_type), "", *rows[6:10]]) + "\n"
    )
    without_delay = [",".join(v for i, v in enumerate(r.split(",")) if i != delay) for r in [header, *rows[10:13]]]
    (folder / "b-missing-column.csv").write_text("\n".join(without_delay) + "\n")
    (folder / "c-empty.csv").write_bytes(b"")
    latin = rows[13].replace(",EWR,", ",EWR\xe9,") if ",EWR," in rows[13] else rows[13] + "\xe9"
    (folder / "d-latin1.csv").write_bytes(("\n".join([header, rows[14], latin, rows[15]]) + "\n").encode("latin-1"))
    return folder


@pytest.fixture(scope="module")
def bad_day_ingest(layout: Layout, bad_landing: Path) -> dict:
    path = data_stages.ingest(data_stages.StageInput("flights", BAD_DAY, AFTER_BAD_DAY))
    return json.loads(path.read_text())


def test_every_input_row_is_in_output_or_quarantine(layout: Layout, bad_landing: Path, bad_day_ingest: dict) -> None:
    offered = sum(data_lines(f) for f in bad_landing.glob("*.csv"))
    assert bad_day_ingest["rows_total"] + bad_day_ingest["quarantined_total"] == offered
    assert bad_day_ingest["quarantined_total"] == 3
    quarantine = pads.dataset(str(layout.quarantine("ingest") / f"ds={BAD_DAY}")).to_table().to_pylist()
    found = {(Path(r["source_file"]).name, r["line"]): r["reason"] for r in quarantine}
    assert found == {
        ("a-mixed.csv", 7): "expected 19 fields, found 4",
        ("a-mixed.csv", 8): "dep_delay: expected double, got 'soon'",
        ("d-latin1.csv", 3): found[("d-latin1.csv", 3)],
    }
    assert found[("d-latin1.csv", 3)].startswith("not valid UTF-8: byte 0xe9")
    files = {Path(f["path"]).name: f for f in bad_day_ingest["files"]}
    assert files["c-empty.csv"]["problem"] == "empty file"
    assert files["b-missing-column.csv"]["missing_columns"] == ["dep_delay"]


def test_rerunning_an_interval_replaces_it(layout: Layout, bad_day_ingest: dict) -> None:
    before = dataset_rows(layout.dataset("curated"), BAD_DAY)
    quarantine_before = dataset_rows(layout.quarantine("ingest"), BAD_DAY)
    again = json.loads(data_stages.ingest(data_stages.StageInput("flights", BAD_DAY, AFTER_BAD_DAY)).read_text())
    assert again["rows"] == bad_day_ingest["rows"]
    assert dataset_rows(layout.dataset("curated"), BAD_DAY) == before
    assert dataset_rows(layout.quarantine("ingest"), BAD_DAY) == quarantine_before
    assert not any((layout.settings.data_root / "_staging").rglob("*.parquet"))


def test_local_engine_writes_what_spark_writes(layout: Layout, bad_day_ingest: dict) -> None:
    from flightplan.data.ingest import ingest

    spark_rows = dataset_rows(layout.dataset("curated"), BAD_DAY)
    spark_quarantine = dataset_rows(layout.quarantine("ingest"), BAD_DAY)
    local = json.loads(ingest(layout, BAD_DAY, AFTER_BAD_DAY, engine="local").read_text())
    assert local["engine"] == "local" and bad_day_ingest["engine"] == "spark"
    assert dataset_rows(layout.dataset("curated"), BAD_DAY) == spark_rows
    assert dataset_rows(layout.quarantine("ingest"), BAD_DAY) == spark_quarantine


def test_dimensions_are_joined(good_days: dict, layout: Layout) -> None:
    rows = dataset_rows(layout.dataset("curated"), FIRST_DAY)
    with_weather = sum(r["temp"] is not None for r in rows)
    with_plane = sum(r["plane_seats"] is not None for r in rows)
    assert with_weather / len(rows) > 0.95 and 0.5 < with_plane / len(rows) < 1.0
    notes = good_days["ingest"]["dimensions"]
    assert notes["weather"]["rows"] > 20_000 and notes["planes"]["duplicate_keys"] == 0


def test_missing_column_fails_validation_clearly(bad_day_ingest: dict) -> None:
    with pytest.raises(data_stages.ValidationFailed) as caught:
        data_stages.validate(data_stages.StageInput("flights", BAD_DAY, AFTER_BAD_DAY))
    message = str(caught.value)
    assert "b-missing-column.csv lacks column(s) ['dep_delay']" in message
    assert "expect_table_row_count_to_be_between(min_value=100" in message
    assert "Data Docs:" in message


def test_a_day_whose_landing_files_are_gone_keeps_its_rows(
    layout: Layout, good_days: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Re-running a range in which one day's files were removed (its folder emptied) or its folder deleted
    replaces the days that landed and leaves the others as they were, saying which."""
    from flightplan.data.ingest import ingest

    second, third = FIRST_DAY + timedelta(days=1), FIRST_DAY + timedelta(days=2)
    kept = {day: dataset_rows(layout.dataset("curated"), day) for day in (FIRST_DAY, second)}
    emptied, removed = layout.landing / FIRST_DAY.isoformat(), layout.landing / second.isoformat()
    shutil.copytree(emptied, tmp_path / "emptied")
    removed.rename(tmp_path / "removed")
    for file in emptied.iterdir():
        file.unlink()
    try:
        with caplog.at_level("WARNING", logger="flightplan.data.ingest"):
            manifest = json.loads(ingest(layout, FIRST_DAY, END_DAY, engine="local").read_text())
    finally:
        shutil.rmtree(emptied)
        shutil.copytree(tmp_path / "emptied", emptied)
        (tmp_path / "removed").rename(removed)
    assert manifest["days_without_landing"] == manifest["days_kept"] == [str(FIRST_DAY), str(second)]
    assert {day: dataset_rows(layout.dataset("curated"), day) for day in kept} == kept
    assert manifest["rows"] == good_days["ingest"]["rows"]  # the kept days counted with what they hold
    assert dataset_rows(layout.dataset("curated"), third)
    assert f"no landing files for {FIRST_DAY}, {second}: their curated rows are kept" in caplog.text


def test_a_rerun_of_an_old_day_splits_up_to_the_newest_labeled_day(layout: Layout, good_days: dict) -> None:
    newest = data_stages.StageInput("flights", FIRST_DAY, END_DAY)
    old = data_stages.StageInput("flights", FIRST_DAY, FIRST_DAY + timedelta(days=1))
    window = data_stages.training_window(newest, layout.config, layout)
    assert window[1] == END_DAY
    assert data_stages.training_window(old, layout.config, layout) == window


def test_no_landing_files_is_a_clear_error() -> None:
    from flightplan.data.ingest import NoLandingData

    with pytest.raises(NoLandingData, match="no landing files for 2014-06-01"):
        data_stages.ingest(data_stages.StageInput("flights", date(2014, 6, 1), date(2014, 6, 2)))


def test_good_days_flow_through_every_stage(good_days: dict, replayed: dict[str, int], layout: Layout) -> None:
    ingest, label = good_days["ingest"], good_days["label"]
    assert ingest["rows"] == replayed and ingest["quarantined_total"] == 0
    assert good_days["validate"]["success"] is True
    assert Path(good_days["validate"]["data_docs"]).exists()
    assert good_days["wrangle"]["rows_total"] + good_days["wrangle"]["quarantined_total"] == ingest["rows_total"]
    assert label["rows_total"] + label["quarantined_total"] == good_days["wrangle"]["rows_total"]
    assert label["quarantined_total"] > 0  # cancelled flights have no arrival delay, so no label
    split = good_days["split"]
    assert sum(s["rows"] for s in split["sides"].values()) == label["rows_total"]
    assert split["sides"]["train"]["to"] < split["sides"]["validation"]["from"] <= split["sides"]["validation"]["to"]
    assert split["sides"]["validation"]["to"] < split["sides"]["test"]["from"]
    profile = Path(good_days["profile"]["path"])
    assert "Label <code>delayed</code>" in profile.read_text()
    assert set(json.loads((profile.parent / "profile.json").read_text())["label"]["counts"]) == {"0", "1", "unknown"}


def test_the_profile_lists_the_most_frequent_values_of_each_text_column(good_days: dict, layout: Layout) -> None:
    from flightplan.data.batches import read_partitions
    from flightplan.data.partitions import days_in

    profile = json.loads((Path(good_days["profile"]["path"]).parent / "profile.json").read_text())
    days = days_in(FIRST_DAY, END_DAY)  # the profiled days only: this module's other tests add days
    curated = read_partitions(layout.dataset("curated"), layout.config.source.partition_column, days).to_pandas()
    for name in ("carrier", "tailnum", "plane_manufacturer"):
        counts = curated[name].value_counts(dropna=False)
        top = profile["columns"][name]["top_values"]
        assert len(top) == min(10, len(counts)), name
        listed = [n for _, n in top]
        assert listed == sorted(listed, reverse=True) and listed[0] == counts.max(), name
        for value, n in top:
            assert n == (curated[name].isna().sum() if value is None else counts[value]), (name, value)
        assert not (set(counts[counts > listed[-1]].index.dropna()) - {v for v, _ in top}), name


def test_split_is_reproducible(good_days: dict) -> None:
    job = data_stages.StageInput("flights", FIRST_DAY, END_DAY, fresh=True)
    again = json.loads(data_stages.split(job).manifest.read_text())
    assert again["fingerprint"] == good_days["split"]["fingerprint"]
    assert again["sides"] == good_days["split"]["sides"]


def test_a_split_of_the_same_rows_config_and_code_writes_nothing(
    layout: Layout, good_days: dict, tmp_path: Path
) -> None:
    """The newest split stands while its labeled rows, window, config and code are unchanged, in whatever order
    the rows were written again: nothing is written, and the stage's MLflow run names the split reused. One
    day's rows changed, a config value changed or ``fresh``: a new split."""
    import pyarrow.parquet as pq
    from flightplan.tracking import REUSED_TAG, RunContext, client, data_experiment

    def split(run_id: str, **changes: Any) -> data_stages.SplitOutcome:
        job = data_stages.StageInput("flights", FIRST_DAY, END_DAY, RunContext("data_engineering", run_id))
        return data_stages.split(dataclasses.replace(job, **changes))

    made = split("it-split-first", fresh=True)
    assert made.unchanged is None
    written = made.manifest.stat().st_mtime_ns
    day = layout.dataset("labeled") / f"ds={FIRST_DAY.isoformat()}"
    files = sorted(day.glob("*.parquet"))
    shutil.copytree(day, tmp_path / "day")
    rows = pq.read_table(day)
    for file in files:
        file.unlink()
    try:
        pq.write_table(rows.take(list(reversed(range(rows.num_rows)))), day / "reversed.parquet")
        again = split("it-split-again")
        assert again.manifest == made.manifest and made.manifest.stat().st_mtime_ns == written
        assert again.unchanged is not None and again.unchanged.startswith(f"cache hit: {made.manifest} was made of")
        pq.write_table(rows.slice(1), day / "reversed.parquet")  # a day that lost a row
        assert split("it-split-changed-day").unchanged is None
    finally:
        shutil.rmtree(day)
        shutil.copytree(tmp_path / "day", day)
    assert split("it-split-restored").unchanged is None  # the restored rows are not the changed day's split
    assert split("it-split-seed", overrides={"split.seed": 7}).unchanged is None
    assert split("it-split-fresh", overrides={"split.seed": 7}, fresh=True).unchanged is None
    assert split("it-split-back").unchanged is None  # back to the config's seed
    mlflow_client = client(layout.settings)
    experiment = mlflow_client.get_experiment_by_name(data_experiment(layout.config))
    assert experiment is not None
    query = "tags.`airflow.run_id` = 'it-split-again' and tags.`flightplan.stage` = 'split'"
    (cached_run,) = mlflow_client.search_runs([experiment.experiment_id], filter_string=query)
    assert cached_run.data.tags[REUSED_TAG] == f"split: {made.manifest}"


def test_stratified_split_keeps_class_balance(good_days: dict) -> None:
    job = data_stages.StageInput("flights", FIRST_DAY, END_DAY, overrides={"split.strategy": "stratified"})
    manifest = json.loads(data_stages.split(job).manifest.read_text())
    shares = {side: stats["classes"]["1"] / stats["rows"] for side, stats in manifest["sides"].items()}
    assert max(shares.values()) - min(shares.values()) < 0.01
    assert abs(manifest["sides"]["train"]["rows"] / sum(s["rows"] for s in manifest["sides"].values()) - 0.7) < 0.01


def test_stages_are_tracked_in_mlflow(good_days: dict, layout: Layout) -> None:
    from flightplan.tracking import client, data_experiment

    mlflow_client = client(layout.settings)
    experiment = mlflow_client.get_experiment_by_name(data_experiment(layout.config))
    assert experiment is not None
    runs = mlflow_client.search_runs([experiment.experiment_id], max_results=200)
    stages = {r.data.tags.get("flightplan.stage") for r in runs}
    assert {"ingest", "profile", "validate", "wrangle", "label", "split"} <= stages
    split_run = next(
        r for r in runs if r.data.tags.get("flightplan.data_fingerprint") == good_days["split"]["fingerprint"]
    )
    assert split_run.data.tags["flightplan.stage"] == "split"
    assert split_run.data.tags["flightplan.config_hash"] == layout.config.fingerprint()
    assert "mlflow.parentRunId" in split_run.data.tags


def test_most_frequent_values_come_by_count_then_value_missing_first_and_booleans_stay_booleans(spark) -> None:  # type: ignore[no-untyped-def]
    from flightplan.config import ColumnSpec
    from flightplan.data.profile import most_frequent

    rows = [("b", True), ("a", False), ("b", None), ("a", True), (None, True), ("c", True)]
    frame = spark.createDataFrame(rows, "name string, flag boolean")
    columns = [ColumnSpec(name="name", type="string"), ColumnSpec(name="flag", type="boolean")]
    assert most_frequent(frame, columns) == {
        "name": [["a", 2], ["b", 2], [None, 1], ["c", 1]],
        "flag": [[True, 4], [None, 1], [False, 1]],
    }
