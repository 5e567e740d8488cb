"""Date partitions that are replaced whole: a re-run of an interval swaps each day's folder for the new
one in a single rename, so readers see the old partition or the new one, never a half-written one."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

if TYPE_CHECKING:
    from flightplan.layout import Layout

log = logging.getLogger(__name__)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def visible_files(folder: Path) -> list[Path]:
    """The data files of a landing or snapshot folder: names starting with '.' or '_' are partial or hidden."""
    return sorted(p for p in folder.glob("*") if p.is_file() and not p.name.startswith((".", "_")))


def days_in(start: date, end: date) -> list[date]:
    """The days of the half-open interval [start, end), as Airflow's data intervals are."""
    if end <= start:
        raise ValueError(f"empty interval: end {end} is not after start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days)]


def interval_key(start: date, end: date) -> str:
    return f"{start.isoformat()}_{end.isoformat()}"


def partition_dir(root: Path, column: str, day: date) -> Path:
    return root / f"{column}={day.isoformat()}"


def existing_partitions(root: Path, column: str, days: Iterable[date]) -> list[Path]:
    return [p for p in (partition_dir(root, column, d) for d in days) if p.is_dir()]


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE)."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), f"{a} <-> {b}")
    # A file system without exchange: two renames, the only moment the day is briefly absent.
    parked = a.with_name(a.name + ".parked")
    os.rename(b, parked)
    os.rename(a, b)
    os.rename(parked, a)


def replace_partitions(staged: Path, target: Path, column: str, days: Iterable[date]) -> None:
    """Make each day of ``target`` what ``staged`` holds for it; a day with nothing staged is emptied."""
    target.mkdir(parents=True, exist_ok=True)
    for day in days:
        new = partition_dir(staged, column, day)
        current = partition_dir(target, column, day)
        if new.is_dir() and current.is_dir():
            exchange(new, current)
            shutil.rmtree(new)
        elif new.is_dir():
            os.rename(new, current)
        elif current.is_dir():
            retired = staged / f".retired-{day.isoformat()}"
            staged.mkdir(parents=True, exist_ok=True)
            os.rename(current, retired)
            shutil.rmtree(retired)


@contextmanager
def staging_area(layout: Layout, stage: str, key: str) -> Iterator[Path]:
    """The stage's scratch folder for the interval ``key``, empty and held by this process alone until the block
    ends, then removed. Another attempt at the same stage and interval (a retry that starts while an orphaned try
    still runs, two runs of one interval) waits here: the kernel releases the lock when its holder exits, killed
    or not, so two attempts never publish at once. Each attempt writes into a folder of its own: the jobs of a
    killed attempt may run on after it in a Spark Connect server, and what they write is never published (the
    next attempt removes it)."""
    with held(layout.lock(stage, key), f"another attempt at {stage} {key}"):
        # What earlier attempts left goes; an orphan still writing may keep its folder busy, which is no error here.
        shutil.rmtree(layout.staging(stage, key), ignore_errors=True)
        staging = layout.staging(stage, key) / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):  # not empty: an orphaned attempt writes on into its folder
                staging.parent.rmdir()


@contextmanager
def held(lock_path: Path, holder: str) -> Iterator[None]:
    """An exclusive lock on ``lock_path`` (created if missing, kept after) for the block; waits, saying so, while
    ``holder`` has it. A flock: the kernel releases it when its process exits, killed or not."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for %s: %s holds it", lock_path, holder)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fresh_dir(path: Path) -> Path:
    """An empty folder at ``path``; leftovers of an earlier, interrupted attempt are removed."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def partition_files(root: Path, column: str, days: Iterable[date]) -> list[Path]:
    """The Parquet files of the days' partitions, in a stable order."""
    return [f for folder in existing_partitions(root, column, days) for f in sorted(folder.glob("*.parquet"))]


def count_rows(root: Path, column: str, days: Iterable[date]) -> dict[str, int]:
    """Rows per day from the Parquet footers, without reading the data."""
    return {
        day.isoformat(): sum(pq.ParquetFile(f).metadata.num_rows for f in partition_files(root, column, [day]))
        for day in days
    }
