"""Homes the tests own: a copy of a prepared home, with every absolute path that named the prepared home (in the
manifests, MLflow's database and artifacts) moved to the copy, so that what a module writes lands in its copy
only."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"


def copy_home(source: Path, target: Path) -> Path:
    """``source`` copied to ``target`` with its paths moved; raises when a file still names ``source``."""
    # Not Spark's scratch folder: the session's Spark keeps writing there while modules run.
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True, ignore=_spark_scratch(source))
    old, new = str(source), str(target)
    left = []
    for path in _files(target):
        if path.name.endswith(("-wal", "-shm", "-journal")):
            continue  # read through its database, which the move rewrites whole
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
        if header == SQLITE_HEADER:
            _move_paths_in_database(path, old, new)
            # A database is checked after the move: a value SQLite stores other than as text is not moved.
            written = [path, path.with_name(f"{path.name}-wal")]
            left += [str(file) for file in written if file.exists() and old.encode() in file.read_bytes()]
        else:
            data = path.read_bytes()
            if old.encode() in data:
                path.write_bytes(data.replace(old.encode(), new.encode()))
    if left:
        raise AssertionError(f"the copy of {source} still names it in: {left}")
    return target


def _spark_scratch(home: Path) -> Callable[[str, list[str]], list[str]]:
    def ignored(folder: str, names: list[str]) -> list[str]:
        return ["spark"] if Path(folder) == home and "spark" in names else []

    return ignored


def _files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and not path.is_symlink()]


def _move_paths_in_database(path: Path, old: str, new: str) -> None:
    """Every text value of the SQLite database at ``path`` that names ``old`` names ``new`` instead; the file is
    then rewritten (VACUUM) so that no free page keeps an old value."""
    database = sqlite3.connect(path)
    try:
        tables = [name for (name,) in database.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            columns = [row[1] for row in database.execute(f'pragma table_info("{table}")')]
            for column in columns:
                database.execute(
                    f'update "{table}" set "{column}" = replace("{column}", ?, ?) '
                    f'where typeof("{column}") = \'text\' and instr("{column}", ?) > 0',
                    (old, new, old),
                )
        database.commit()
        database.execute("vacuum")
        database.execute("pragma wal_checkpoint(truncate)")
    finally:
        database.close()
