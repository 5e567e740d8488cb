"""Step caching for model engineering: tuning and training whose inputs (the split's data fingerprint, the
effective config's hash, the library's code) equal those of an earlier run that trained reuse that run's
outputs instead of doing the work again, and say so in the task log and in MLflow. Tuning decides for the run:
training reuses the booster of the run whose tuning was reused, and trains when tuning did the work."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from flightplan.config import PipelineConfig
from flightplan.layout import Layout
from flightplan.settings import Settings
from flightplan.tracking import code_version, record_reuse, reused_by

log = logging.getLogger(__name__)

# On a run whose train stage finished: the key of its inputs, which a later run looks for.
KEY_TAG = "flightplan.cache_key"


def cache_key(data_fingerprint: str, config: PipelineConfig) -> str:
    """What a run's tuning and training depend on: its data, its effective config (Params included) and code."""
    inputs = f"{data_fingerprint}|{config.fingerprint()}|{code_version()}"
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def trained_run(settings: Settings, layout: Layout, key: str, run_id: str, wanted: tuple[str, ...]) -> str | None:
    """The newest other run of the pipeline that trained with inputs of ``key`` and still has every file of
    ``wanted`` in its run folder; None when there is none."""
    from flightplan.tracking import client, experiment_id, model_experiment

    mlflow_client = client(settings)
    found = mlflow_client.search_runs(
        [experiment_id(mlflow_client, settings, model_experiment(layout.config))],
        filter_string=f"tags.`{KEY_TAG}` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in found:
        earlier = run.info.run_id
        if earlier != run_id and all((layout.model_run(earlier) / file).is_file() for file in wanted):
            return str(earlier)
    return None


def reused_run(stage: str) -> str | None:
    """The earlier run whose output ``stage`` of MLflow's active run reused; None when it did the work."""
    reused = reused_by(stage)
    return reused.removeprefix("run ") if reused else None


def reuse(layout: Layout, stage: str, earlier: str, run_id: str, file: str) -> Path:
    """Copies ``file`` of the earlier run's folder into this run's, and records the reuse in MLflow's active
    run and the task log; returns the copy."""
    copy = layout.model_run(run_id) / file
    shutil.copyfile(layout.model_run(earlier) / file, copy)
    record_reuse(stage, f"run {earlier}")
    log.info(
        "%s: cache hit: run %s had the same data, config and code; its %s is reused (Param fresh: do the work)",
        stage,
        earlier,
        file,
    )
    return copy
