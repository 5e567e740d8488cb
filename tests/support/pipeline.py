"""The demo pipeline as the tests drive it in process: the repository, the real days they replay, the
data_engineering chain, quick model chains, and what a finished or interrupted run leaves on disk."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from flightplan.layout import Layout
from flightplan.model import stages
from flightplan.settings import Settings

REPO = Path(__file__).resolve().parents[2]


DATASETS = ("curated", "wrangled", "labeled", "quarantine", "splits")


FIRST_DAY, END_DAY = date(2013, 1, 1), date(2013, 1, 4)


# What a client with the inference token could send as a text field, to run as whoever opens a report of it.
SCRIPT_PAYLOAD = '</script><script>alert("xss");document.title="pwned";fetch("/api/v2/dags")</script>'


def data_digest(data_root: Path, pipeline: str) -> dict[str, tuple[int, int, str]]:
    """Each Parquet folder of the pipeline's datasets: (files, rows, digest of its rows in any order)."""
    digests = {}
    for dataset in DATASETS:
        root = data_root / dataset / pipeline
        for folder in sorted({f.parent for f in root.rglob("*.parquet")}):
            files = sorted(folder.glob("*.parquet"))
            frame = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
            frame = frame[sorted(frame.columns)]
            rows = sorted(pd.util.hash_pandas_object(frame, index=False).tolist())
            digest = hashlib.sha256(str(rows).encode()).hexdigest()
            digests[str(folder.relative_to(data_root))] = (len(files), len(frame), digest)
    return digests


def leftovers(data_root: Path) -> list[str]:
    """Files an interrupted write could leave behind: in staging, Spark's temporary folders, hidden partials."""
    staged = [str(p) for p in (data_root / "_staging").rglob("*") if p.is_file()]
    hidden = [str(p) for p in data_root.rglob(".*") if not p.name.endswith(".crc")]
    temporary = [str(p) for p in data_root.rglob("_temporary")]
    return staged + hidden + temporary


def data_engineering_manifests(layout: Layout, start: date, end: date) -> dict[str, dict]:
    """What each data_engineering stage left for [start, end): its manifest, or the path of the profile page."""
    from flightplan.data.partitions import interval_key

    key = interval_key(start, end)
    stages_with_manifests = ("ingest", "validate", "wrangle", "label")
    found = {stage: json.loads(layout.manifest(stage, key).read_text()) for stage in stages_with_manifests}
    found["split"] = json.loads((layout.splits / key / "manifest.json").read_text())
    found["profile"] = {"path": str(layout.reports("profile") / key / "profile.html")}
    return found


def run_data_engineering(start: date, end: date) -> dict[str, dict]:
    """The data_engineering tasks on [start, end) in this process (its Spark session), in the DAG's order:
    each stage's manifest, or the path of the report it wrote."""
    from flightplan.data import stages as data_stages

    written = data_stages.run_in_order(data_stages.StageInput("flights", start, end))
    return {
        stage: json.loads(path.read_text()) if path.suffix == ".json" else {"path": str(path)}
        for stage, path in written.items()
    }


# A module's registry may already hold a champion: a quick model is accepted whatever it is.
QUICK = {
    "model.tuning.trials": 3,
    "model.tuning.num_boost_round": 60,
    "model.acceptance.minimum": {},
    "model.acceptance.champion_margin": -1.0,
}


WORSE = {
    **QUICK,
    "model.acceptance.champion_margin": 0.0,
    "model.tuning.num_boost_round": 1,
    "model.tuning.space": {"max_depth": {"type": "int", "low": 1, "high": 1}},
    "model.selection.keep_at_least": 1,
    "model.selection.min_gain_share": 0.99,
    "model.acceptance.maximum": {},
}


def run_chain(job: stages.ModelJob, gate: bool = True) -> tuple[str, dict[str, str]]:
    """The model_engineering tasks in order (without the acceptance gate when ``gate`` is off)."""
    run_id = stages.features(job)
    stages.tune(job, run_id)
    stages.train(job, run_id)
    stages.evaluate(job, run_id)
    if gate:
        stages.accept(job, run_id)
    return run_id, stages.register(job, run_id, stages.package_onnx(job, run_id))


def register_worse_challenger() -> str:
    """A one-split-deep, one-round model of the same data, registered as challenger without its gate."""
    from flightplan.tracking import RunContext

    job = stages.ModelJob("flights", RunContext(dag_id="e2e", run_id="worse"), {**WORSE, "model.tuning.trials": 1})
    return run_chain(job, gate=False)[1]["version"]


def aliases(settings: Settings) -> dict[str, str]:
    from flightplan.tracking import client

    return {k: str(v) for k, v in client(settings).get_registered_model("flights-delayed").aliases.items()}


def copy_as_challenger(settings: Settings, version: str) -> str:
    """A new registry version of the same model (as good as the original, with its lineage tags), with the
    challenger alias."""
    import mlflow
    from flightplan.tracking import client

    mlflow_client = client(settings)
    original = mlflow_client.get_model_version("flights-delayed", version)
    new = str(mlflow.register_model(original.source, "flights-delayed", tags=original.tags).version)
    mlflow_client.set_registered_model_alias("flights-delayed", "challenger", new)
    return new
