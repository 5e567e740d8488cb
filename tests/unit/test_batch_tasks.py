"""How batch scoring cuts an interval's wrangled files into Spark tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flightplan.deployment import batch
from flightplan.deployment.batch import MIN_TASKS, TASK_BYTES, FilePiece, day_files, file_groups, file_pieces


def pieces(sizes: list[int]) -> list[FilePiece]:
    return [
        FilePiece(f"day-{n:03d}.parquet", None, f"scored/day-{n:03d}.parquet", size) for n, size in enumerate(sizes)
    ]


def test_small_days_are_cut_into_enough_tasks_for_every_core() -> None:
    days = pieces([20_000] * 365)
    groups = file_groups(days)
    assert len(groups) == MIN_TASKS
    assert [piece for group in groups for piece in group] == days  # in day order
    assert max(len(group) for group in groups) - min(len(group) for group in groups) <= 1


def test_large_files_make_tasks_of_about_the_task_size_and_few_files_one_task_each() -> None:
    assert len(file_groups(pieces([TASK_BYTES // 4] * 400))) == 100
    assert [len(group) for group in file_groups(pieces([10, 10, 10]))] == [1, 1, 1]
    assert file_groups([]) == []


def test_the_files_of_each_day_keep_their_day_folder_and_hidden_files_are_left_out(tmp_path: Path) -> None:
    days = [tmp_path / "ds=2013-01-01", tmp_path / "ds=2013-01-02"]
    table = pa.table({"x": [1, 2, 3]})
    for day in days:
        day.mkdir()
        for name in ("part-1.parquet", "part-0.parquet", "_common.parquet"):
            pq.write_table(table, day / name)
        (day / ".part-0.parquet.crc").write_bytes(b"")
        (day / "_SUCCESS").write_bytes(b"")
    target = tmp_path / "staging"
    assert [(Path(p.source), p.row_groups, Path(p.target)) for p in day_files(days, target)] == [
        (day / name, None, target / day.name / name) for day in days for name in ("part-0.parquet", "part-1.parquet")
    ]


def test_a_file_larger_than_a_task_is_cut_into_runs_of_its_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Spark splits a large file: a large day is scored by several tasks, each a run of its row groups."""
    file = tmp_path / "part-0.snappy.parquet"
    pq.write_table(pa.table({"x": np.arange(8_000, dtype=np.int64)}), file, row_group_size=1_000, compression="none")
    monkeypatch.setattr(batch, "TASK_BYTES", file.stat().st_size // 4 + 1)
    cut = file_pieces(file, tmp_path / "scored")
    assert [piece.row_groups for piece in cut] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [Path(piece.target).name for piece in cut] == [f"part-0.snappy-{n}.parquet" for n in range(4)]
    assert sum(piece.size for piece in cut) <= file.stat().st_size
    monkeypatch.setattr(batch, "TASK_BYTES", file.stat().st_size)
    assert [piece.row_groups for piece in file_pieces(file, tmp_path)] == [None]  # fits one task: whole


def test_a_file_without_a_column_scoring_reads_is_named_with_the_columns_it_lacks(tmp_path: Path) -> None:
    file = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"flight_id": ["a"], "distance": [1.0]}), file)
    scorer = batch.BatchScorer("1", b"", "", "{}", [], 0.5, passthrough=["flight_id"])
    files = batch.ScoreFiles(scorer, ["flight_id", "distance", "carrier"])
    with pytest.raises(ValueError, match=r"part-0\.parquet lacks column\(s\) \['carrier'\] that scoring reads"):
        files([FilePiece(str(file), None, str(tmp_path / "scored.parquet"), 1)])
    assert not (tmp_path / "scored.parquet").exists()
