"""The data root turned read-only under the stages (a read-only bind mount of it, as a full or remounted disk
leaves it): each stage fails at once with the path and the operating system's reason, and nothing it had
written before is changed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flightplan.data import stages as data_stages
from flightplan.settings import Settings

from tests.support.pipeline import END_DAY, FIRST_DAY, data_digest, leftovers


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only for every process, root included, until exit (needs the right to mount)."""
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if bind.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot bind-mount {folder}: {bind.stderr}")
        pytest.skip(f"cannot bind-mount {folder} here: {bind.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)


@pytest.mark.parametrize(
    "stage", [data_stages.ingest, data_stages.wrangle, data_stages.split], ids=lambda s: s.__name__
)
def test_a_stage_on_a_read_only_data_root_fails_clearly_and_changes_nothing(
    good_days: dict[str, dict], settings: Settings, stage: Callable[[data_stages.StageInput], Path]
) -> None:
    data_root = settings.data_root
    before = data_digest(data_root, "flights")
    assert {folder.split("/")[0] for folder in before} >= {"curated", "wrangled", "labeled", "splits"}, before
    with read_only(data_root), pytest.raises(OSError, match="Read-only file system") as failure:
        stage(data_stages.StageInput("flights", FIRST_DAY, END_DAY, fresh=True))  # a split of the same rows, too
    assert str(data_root) in str(failure.value)
    assert data_digest(data_root, "flights") == before
    assert leftovers(data_root) == []
