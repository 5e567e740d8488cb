"""Files that appear whole or not at all: a writer fills a hidden partial file beside the target, then renames
it over the target (atomic on one file system), so a reader never sees half a file and a crash keeps the old one.
The partial's name starts with a dot, which every reader of a folder skips."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def replace_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Calls ``write`` with a partial file's path, then puts that file in place of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(document: dict[str, Any], path: Path) -> Path:
    return replace_atomically(
        path, lambda partial: partial.write_text(json.dumps(document, indent=2, sort_keys=True, default=str))
    )


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    return replace_atomically(path, lambda partial: pq.write_table(table, partial))
