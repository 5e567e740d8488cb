"""How batch scoring cuts an interval's wrangled files into Spark tasks."""

from __future__ import annotations

from pathlib import Path

from flightplan.deployment.batch import MIN_TASKS, TASK_BYTES, day_files, file_groups


def files(folder: Path, sizes: list[int]) -> list[tuple[Path, Path]]:
    pairs = []
    for number, size in enumerate(sizes):
        source = folder / f"day-{number:03d}.parquet"
        with source.open("wb") as sink:
            sink.truncate(size)  # sparse: the size is all that counts
        pairs.append((source, folder / "scored" / source.name))
    return pairs


def test_small_days_are_cut_into_enough_tasks_for_every_core(tmp_path: Path) -> None:
    pairs = files(tmp_path, [20_000] * 365)
    groups = file_groups(pairs)
    assert len(groups) == MIN_TASKS
    assert [pair for group in groups for pair in group] == [(str(s), str(t)) for s, t in pairs]  # in day order
    assert max(len(group) for group in groups) - min(len(group) for group in groups) <= 1


def test_large_files_make_tasks_of_about_the_task_size_and_few_files_one_task_each(tmp_path: Path) -> None:
    assert len(file_groups(files(tmp_path, [TASK_BYTES // 4] * 400))) == 100
    assert [len(group) for group in file_groups(files(tmp_path, [10, 10, 10]))] == [1, 1, 1]
    assert file_groups([]) == []


def test_the_files_of_each_day_keep_their_day_folder_and_hidden_files_are_left_out(tmp_path: Path) -> None:
    days = [tmp_path / "ds=2013-01-01", tmp_path / "ds=2013-01-02"]
    for day in days:
        day.mkdir()
        for name in ("part-1.parquet", "part-0.parquet", ".part-0.parquet.crc", "_SUCCESS", "_common.parquet"):
            (day / name).write_bytes(b"")
    target = tmp_path / "staging"
    assert day_files(days, target) == [
        (day / name, target / day.name / name) for day in days for name in ("part-0.parquet", "part-1.parquet")
    ]
