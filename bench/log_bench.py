"""Prediction-log benchmark: what logging an answered row costs the service, and what reading it back costs
monitoring.

Write: records as the service holds them (validated from JSON by the pipeline's record type), encoded for the
log by the service's own ``logged_rows`` and committed through its log writer (``PredictionLog``), one request
outstanding at a time as a caller awaiting its commit: single-row requests committed in groups of
``--group`` (what the batcher gathers at that many connections), as JSON text, and 1000-row requests one per
commit, as columns. Per row:
wall time (fsyncs included) and CPU time of the whole process (the writer thread included), which is what the
log takes from serving on a busy machine.

Sealing: the columnar copy of those rows that the log's sealer makes once the writer is quiet, measured apart.
Read: ``current_window``, the monitoring check's read of the rows of each write (log → columns → derived
features), per row. The rows are the demo's labeled days in time order; each answer is its row's label (the
log's cost does not depend on the model), with a probability for a classifier.

The log is the home's default (SQLite) unless ``--url`` names another database (a PostgreSQL URL, for instance);
each size gets a fresh log."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from train_bench import END, PIPELINE, START, prepare_split

LARGE_REQUEST = 1000


def validated_records(rows: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """``rows`` records of the demo's labeled days as the service validates them, and their labels."""
    import pandas as pd
    from flightplan.dev.replay import labeled_days
    from flightplan.layout import open_pipeline
    from flightplan.serving.inputs import json_records, record_fields, record_type
    from pydantic import TypeAdapter

    _, config, layout = open_pipeline(PIPELINE)
    year = labeled_days(layout, START, END)
    frame = pd.concat([year] * -(-rows // len(year)), ignore_index=True).head(rows)
    record: Any = record_type(config)  # built from the config: typed as Any for the checker
    records = TypeAdapter(list[record]).validate_python(json_records(frame, list(record_fields(config))))
    return records, frame[config.label.name].tolist()


def timed_per_row(rows: int, action: Callable[[], object]) -> tuple[float, float]:
    """Microseconds of wall time and of the process's CPU time per row that ``action`` takes."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return (time.perf_counter() - wall) / rows * 1e6, (time.process_time() - cpu) / rows * 1e6


def write(url: str, records: list[dict[str, Any]], labels: list[Any], size: int, group: int) -> list[float]:
    """Logs every record in requests of ``size`` rows, ``group`` requests per commit, then closes the log; µs
    per row (wall, CPU) of the commits, then of the close, where the segments left by the commits are sealed
    (the sealer waits for a quiet writer, and this writer never is)."""
    from flightplan.layout import open_pipeline
    from flightplan.prediction_log import PredictionLog, create_store_engine, record_schema
    from flightplan.serving.app import logged_rows
    from flightplan.serving.models import Answer

    _, config, _ = open_pipeline(PIPELINE)
    probability = None if config.label.task == "regression" else 0.5
    answers = [Answer(label, probability) for label in labels]
    engine = create_store_engine(url)
    schema = record_schema(config)
    log = PredictionLog(engine, lambda _pipeline: schema)
    per_commit = size * group

    def log_all() -> None:
        for first in range(0, len(records), per_commit):
            committed = []
            for start in range(first, min(first + per_commit, len(records)), size):
                end = min(start + size, len(records))
                request = f"bench-{start}"
                ids = [f"{request}-{row}" for row in range(end - start)]
                rows = (records[start:end], answers[start:end])
                committed.append(logged_rows(config.name, "1", request, ids, *rows, schema))
            log.submit_all(committed).result()

    try:
        return [*timed_per_row(len(records), log_all), *timed_per_row(len(records), log.close)]
    finally:
        engine.dispose()


def read(rows: int, start: datetime) -> tuple[float, float]:
    """The monitoring check's read of every row logged since ``start``; µs per row (wall, CPU)."""
    from flightplan.layout import open_pipeline
    from flightplan.monitoring.window import current_window

    settings, config, _ = open_pipeline(PIPELINE)
    end = datetime.now(UTC) + timedelta(seconds=1)
    frame: list[Any] = []
    figures = timed_per_row(rows, lambda: frame.append(current_window(settings, config, start, end)))
    if len(frame[0]) != rows:
        raise RuntimeError(f"the window holds {len(frame[0]):,} rows, {rows:,} were logged")
    return figures


def fresh_log(url: str | None, folder: Path, name: str) -> str:
    """The log's URL for one measure: a new SQLite file, or the given database with its tables emptied."""
    if url is None:
        for path in folder.glob(f"{name}.db*"):
            path.unlink()
        return f"sqlite:///{folder / name}.db"
    import sqlalchemy as sa
    from flightplan.prediction_log import metadata

    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--group", type=int, default=8, help="single-row requests per commit")
    parser.add_argument("--url", help="the log's database (default: a SQLite file under the home)")
    args = parser.parse_args()
    home = args.home.resolve()
    os.environ["FLIGHTPLAN_HOME"] = str(home)
    prepare_split(home)
    folder = home / "log-bench"
    folder.mkdir(parents=True, exist_ok=True)
    records, labels = validated_records(args.rows)
    print(
        f"\n{args.rows:,} rows, {len(records[0])} fields per record, log: {'SQLite' if args.url is None else 'given'}"
    )
    print("| measure | wall µs/row | CPU µs/row | sealing after: wall µs/row | CPU µs/row |")
    print("|---|---:|---:|---:|---:|")
    for size, group, label in (
        (1, args.group, f"write, 1-row requests, {args.group} per commit"),
        (LARGE_REQUEST, 1, f"write, {LARGE_REQUEST}-row requests, one per commit"),
    ):
        url = fresh_log(args.url, folder, f"size-{size}")
        os.environ["FLIGHTPLAN_PREDICTIONS_DB"] = url
        started = datetime.now(UTC)
        figures = write(url, records, labels, size, group)
        print(f"| {label} | {' | '.join(f'{figure:.2f}' for figure in figures)} |", flush=True)
        wall, cpu = read(len(records), started)
        print(f"| read, the monitoring window of those rows | {wall:.2f} | {cpu:.2f} | | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
