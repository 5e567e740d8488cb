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


HOLD_STAGING = """
import sys, time
from flightplan.data.partitions import staging_area
from flightplan.layout import open_pipeline

_, _, layout = open_pipeline("flights")
with staging_area(layout, "wrangled", "2013-01-01_2013-01-04") as staging:
    (staging / "half-written").touch()
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_second_attempt_waits_for_the_first_to_exit_then_starts_from_an_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An orphaned attempt still running (here a process that holds the interval's staging area) keeps a new
    attempt out until the kernel releases its lock at its death (SIGKILL: no clean-up of its own runs)."""
    import subprocess
    import sys
    import threading

    from flightplan.data.partitions import staging_area
    from flightplan.layout import open_pipeline

    monkeypatch.setenv("FLIGHTPLAN_HOME", str(tmp_path))
    first = subprocess.Popen([sys.executable, "-c", HOLD_STAGING], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline() == "holding\n"
        _, _, layout = open_pipeline("flights")
        entered = threading.Event()
        seen: list[list[str]] = []

        def second_attempt() -> None:
            with staging_area(layout, "wrangled", "2013-01-01_2013-01-04") as staging:
                seen.append([p.name for p in staging.iterdir()])
                entered.set()

        waiting = threading.Thread(target=second_attempt)
        waiting.start()
        assert not entered.wait(2), "the second attempt entered while the first held the staging area"
        assert any(layout.staging("wrangled", "2013-01-01_2013-01-04").glob("*/half-written"))  # the attempt's own
        first.kill()
        assert entered.wait(30), "the second attempt did not start after the first died"
        waiting.join(10)
    finally:
        first.kill()
        first.wait(10)
    assert seen == [[]]  # the dead attempt's half-written file is gone
    assert not layout.staging("wrangled", "2013-01-01_2013-01-04").exists()
    assert layout.lock("wrangled", "2013-01-01_2013-01-04").exists()
