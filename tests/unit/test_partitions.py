from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from flightplan.data.partitions import days_in, exchange, partition_dir, replace_partitions


def test_days_are_half_open() -> None:
    assert days_in(date(2013, 1, 30), date(2013, 2, 2)) == [date(2013, 1, 30), date(2013, 1, 31), date(2013, 2, 1)]
    with pytest.raises(ValueError, match="empty interval"):
        days_in(date(2013, 1, 2), date(2013, 1, 2))


def test_exchange_swaps_two_folders(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "new").touch()
    (b / "old").touch()
    exchange(a, b)
    assert [p.name for p in b.iterdir()] == ["new"]
    assert [p.name for p in a.iterdir()] == ["old"]


def test_replace_partitions_swaps_adds_and_empties(tmp_path: Path) -> None:
    staged, target = tmp_path / "staged", tmp_path / "target"
    d1, d2, d3, untouched = date(2013, 1, 1), date(2013, 1, 2), date(2013, 1, 3), date(2013, 1, 4)
    for day in (d1, d3, untouched):
        partition_dir(target, "ds", day).mkdir(parents=True)
        (partition_dir(target, "ds", day) / "old.parquet").touch()
    for day in (d1, d2):
        partition_dir(staged, "ds", day).mkdir(parents=True)
        (partition_dir(staged, "ds", day) / "new.parquet").touch()
    replace_partitions(staged, target, "ds", [d1, d2, d3])
    assert [p.name for p in partition_dir(target, "ds", d1).iterdir()] == ["new.parquet"]
    assert [p.name for p in partition_dir(target, "ds", d2).iterdir()] == ["new.parquet"]
    assert not partition_dir(target, "ds", d3).exists()
    assert [p.name for p in partition_dir(target, "ds", untouched).iterdir()] == ["old.parquet"]
