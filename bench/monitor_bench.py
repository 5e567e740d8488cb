"""Monitoring benchmark: the monitoring check on 1M logged predictions against plain Evidently.

Ours: the whole `check` task (read the window from the prediction log with the latest feedback joined,
parse, derive, per-feature and prediction drift on every row, live performance, the Evidently reports on a
sample, the summary and the MLflow run). Peer, in the same run: Evidently's DataDriftPreset alone on the same
two frames (the window as `check` reads it, the reference with the model's outputs), run and saved as HTML.
Both must give the same per-column drift verdicts. Each contender runs in a fresh process, timed from its
start to its end, as an Airflow task runs: imports included (Evidently's takes about 5 s here, MLflow's 3.5 s),
and for the peer the reading of the two frames from Parquet files the bench wrote beforehand. The contenders
take turns ``--runs`` times (3 by default); the median ratio is kept.

The log is filled once per home, through the service's own log writer: the demo year's labeled rows in time
order, repeated up to ``--rows``, answered by the bench champion, a fifth of them with their true label sent
back."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from train_bench import END, PIPELINE, START, bench_training, prepare_split, timed

FEEDBACK_SHARE = 0.2
WRITE_BATCH = 10_000


def ensure_champion() -> str:
    from flightplan.model.registry import CHAMPION, alias_version
    from flightplan.settings import load_settings
    from serve_bench import promote_bench_model, work_model_name

    version = alias_version(load_settings(), work_model_name(), CHAMPION)
    if version is None:
        _, job, run_id = bench_training(rounds=300, repeats=1, with_spark=False)
        version = promote_bench_model(job, run_id)[0]
    return version


def fill_log(rows: int, version: str) -> tuple[datetime, datetime]:
    """Logs ``rows`` answered predictions (and feedback for a share of them); returns the window holding them."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from flightplan.dev.replay import labeled_days
    from flightplan.features import derive
    from flightplan.layout import open_pipeline
    from flightplan.monitoring.window import VersionScores
    from flightplan.prediction_log import (
        AnsweredRequest,
        PredictionLog,
        create_store_engine,
        record_feedback,
        record_schema,
    )
    from flightplan.scoring import PREDICTION, PROBABILITY, with_outputs
    from flightplan.serving.inputs import json_records, record_type, request_fields
    from pydantic import TypeAdapter
    from pydantic_core import to_json

    settings, config, layout = open_pipeline(PIPELINE)
    labeled = pa.Table.from_pandas(labeled_days(layout, START, END), preserve_index=False)
    scorer = VersionScores(settings, config, version)
    year = derive(labeled, config.features.derived).to_pandas()
    year = with_outputs(year, scorer(year), scorer.feature_map, scorer.threshold)
    frame = pd.concat([year] * -(-rows // len(year)), ignore_index=True).head(rows)
    print(f"filling the prediction log with {rows:,} rows (once)", flush=True)
    engine = create_store_engine(settings.predictions_db_url)
    log = PredictionLog(engine, lambda _pipeline: record_schema(config))
    fields = list(request_fields(config))
    record: Any = record_type(config)  # built from the config: typed as Any for the checker
    records = TypeAdapter(list[record])  # as the service validates, and so logs, them
    chosen = np.random.default_rng(0).random(rows) < FEEDBACK_SHARE
    start = datetime.now(UTC)
    for first in range(0, rows, WRITE_BATCH):
        part = frame.iloc[first : first + WRITE_BATCH]
        ids = [f"bench-{first + i}" for i in range(len(part))]
        answered = AnsweredRequest(
            request_id=f"bench-{first}",
            pipeline=config.name,
            model_version=version,
            ids=ids,
            inputs=[to_json(record).decode() for record in records.validate_python(json_records(part, fields))],
            predictions=[to_json(value).decode() for value in part[PREDICTION].tolist()],
            probabilities=part[PROBABILITY].tolist(),
        )
        log.submit(answered).result()
        labels = part[config.label.name].tolist()
        truth = {
            i: int(label)
            for i, label, keep in zip(ids, labels, chosen[first : first + WRITE_BATCH], strict=True)
            if keep
        }
        record_feedback(engine, config.name, truth, source="bench")
    log.close()
    engine.dispose()
    return start, datetime.now(UTC) + timedelta(seconds=1)


def evidently_alone(frames: Path, out: Path) -> None:
    """The peer, in its own process: Evidently's DataDriftPreset on the two frames, run and saved as HTML;
    its per-column verdicts written to ``out``."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    from flightplan.monitoring.report import drift_verdicts

    columns = json.loads((frames / "columns.json").read_text())
    numeric, categorical = columns["numeric"], columns["categorical"]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    current, reference = (pd.read_parquet(frames / f"{side}.parquet") for side in ("current", "reference"))
    snapshot = Report([DataDriftPreset(columns=numeric + categorical)], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    snapshot.save_html(str(frames / "evidently.html"))
    out.write_text(json.dumps({column: drifted for column, (_, drifted) in drift_verdicts(snapshot).items()}))


def flightplan_check(window: tuple[datetime, datetime], out: Path) -> None:
    """Ours, in its own process: the monitoring task's `check` on the window; its summary written to ``out``."""
    from flightplan.monitoring.stages import MonitorJob, check
    from flightplan.tracking import RunContext

    job = MonitorJob(PIPELINE, *window, RunContext(dag_id="bench", run_id=f"monitor-bench-{int(time.time())}"))
    summary, _ = check(job)
    out.write_text(summary.model_dump_json())


def write_frames(window: tuple[datetime, datetime], version: str, frames: Path) -> int:
    """The two frames as `check` reads them (the window; the reference with the model's outputs), restricted
    to the columns the drift tests read, as Parquet for the peer; returns the reference's rows."""
    from flightplan.layout import open_pipeline
    from flightplan.model.registry import version_metadata
    from flightplan.monitoring.window import current_window, reference_frame
    from flightplan.scoring import PREDICTION, PROBABILITY

    settings, config, _ = open_pipeline(PIPELINE)
    current = current_window(settings, config, *window)
    reference, _, _ = reference_frame(settings, config, version)
    features = version_metadata(settings, config.registered_model, version)[1].features
    output = PROBABILITY if config.label.task == "binary" else PREDICTION
    numeric = [f.name for f in features if f.kind == "numeric"] + [output]
    categorical = [f.name for f in features if f.kind == "categorical"]
    frames.mkdir(parents=True, exist_ok=True)
    for name, frame in (("current", current), ("reference", reference)):
        frame[numeric + categorical].to_parquet(frames / f"{name}.parquet", index=False)
    (frames / "columns.json").write_text(json.dumps({"numeric": numeric, "categorical": categorical}))
    return len(reference)


def contender(name: str, args: argparse.Namespace, out: Path) -> float:
    """Seconds of one contender's fresh process, from its start to its end."""
    command = [sys.executable, __file__, "--home", str(args.home), "--rows", str(args.rows)]
    return timed(lambda: subprocess.run([*command, "--contender", name, "--out", str(out)], check=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="fresh runs of each contender, in turn; the median kept")
    parser.add_argument("--contender", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.home = args.home.resolve()
    folder = args.home / "monitor-bench"
    log_file = folder / f"predictions-{args.rows}.db"
    os.environ.update({"FLIGHTPLAN_HOME": str(args.home), "FLIGHTPLAN_PREDICTIONS_DB": f"sqlite:///{log_file}"})
    window_file = log_file.with_suffix(".window")
    frames = folder / f"frames-{args.rows}"
    if args.contender == "evidently":
        evidently_alone(frames, args.out)
        return 0
    if args.contender == "ours":
        start, end = (datetime.fromisoformat(moment) for moment in window_file.read_text().split())
        flightplan_check((start, end), args.out)
        return 0

    prepare_split(args.home)
    version = ensure_champion()
    if not window_file.exists():
        log_file.unlink(missing_ok=True)
        start, end = fill_log(args.rows, version)
        window_file.write_text(f"{start.isoformat()} {end.isoformat()}")
    start, end = (datetime.fromisoformat(moment) for moment in window_file.read_text().split())
    reference_rows = write_frames((start, end), version, frames)

    runs = [
        (contender("ours", args, folder / "ours.json"), contender("evidently", args, folder / "evidently.json"))
        for _ in range(args.runs)
    ]
    from flightplan.manifests import MonitoringSummary

    summary = MonitoringSummary.read(folder / "ours.json")
    theirs = json.loads((folder / "evidently.json").read_text())
    ours = {c.column: c.drifted for c in [*summary.columns, *summary.prediction_drift]}
    differ = sorted(c for c in theirs if ours.get(c) != theirs[c])
    print(
        f"\nrows {summary.rows:,} (labeled {summary.labeled_rows:,}), reference {reference_rows:,}, "
        f"columns {len(theirs)} ({sum(theirs.values())} drifting)"
    )
    numbers = " | ".join(f"run {n}" for n in range(1, len(runs) + 1))
    print(f"| contender (a fresh process each) | {numbers} |")
    print("|---|" + "---:|" * len(runs))
    print("| flightplan monitoring check (whole task), s | " + " | ".join(f"{ours:.1f}" for ours, _ in runs) + " |")
    print("| Evidently DataDriftPreset, run + HTML, s | " + " | ".join(f"{peer:.1f}" for _, peer in runs) + " |")
    print("| ratio | " + " | ".join(f"{ours / peer:.2f}" for ours, peer in runs) + " |")
    print(f"median ratio of {len(runs)} runs: {statistics.median(ours / peer for ours, peer in runs):.2f}")
    print(f"same per-column verdicts: {'yes' if not differ else 'NO: ' + ', '.join(differ)}")
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
