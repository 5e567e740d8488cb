"""Promotion and rollback of a pipeline's served model, as the deployment DAG's tasks call them.

A candidate (the `challenger`, or a version asked for) is compared with the `champion` on the newest
labeled data, less the rows either of them trained on; if it wins, `champion` moves to it and the old
champion keeps the alias `previous`; the service is told to reload and a few recent records go through the
live API. When the service cannot load it or answers wrongly, `champion` moves back. Every decision is an
MLflow run of the ``<pipeline>-deployment`` experiment."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flightplan.config import AcceptanceSpec, PipelineConfig
from flightplan.layout import Layout, open_pipeline
from flightplan.manifests import DeploymentDecision
from flightplan.model.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    RegisteredModel,
    alias_version,
    decision_threshold,
)
from flightplan.serving.client import service_client
from flightplan.serving.traffic import ALIAS_HEADER
from flightplan.settings import Settings
from flightplan.tracking import RunContext, stage_run

log = logging.getLogger(__name__)


class ChallengerRefused(RuntimeError):
    """The candidate does not beat the champion on recent data; nothing was changed."""


class ServiceCheckFailed(RuntimeError):
    """The service did not load the promoted version or did not answer correctly with it."""


class RolledBack(RuntimeError):
    """The champion was moved back after a failed check; the message says from what to what and why."""


@dataclass(frozen=True)
class DeployJob:
    pipeline: str
    context: RunContext = field(default_factory=RunContext)
    version: str | None = None  # a registry version to deploy; the `challenger` when None
    reason: str = "manual"

    def open(self) -> tuple[Settings, PipelineConfig, Layout]:
        return open_pipeline(self.pipeline)


NULL_TEXT = "\x00"  # a missing value, in the text of rows compared by hash: no value of a column reads so
ALREADY_CHAMPION = "version {} is already the champion"
FIRST_CHAMPION = "no champion yet: the first model is deployed"


def deployment_experiment(config: PipelineConfig) -> str:
    return f"{config.name}-deployment"


def recent_labeled(layout: Layout, days: int) -> tuple[pa.Table, list[date]]:
    """The newest ``days`` day partitions of the labeled data, with derived features, in a fixed order."""
    from flightplan.data.batches import read_in_order
    from flightplan.features import derive

    source = layout.config.source
    root = layout.dataset("labeled")
    column = source.partition_column
    found = sorted(date.fromisoformat(p.name.split("=", 1)[1]) for p in root.glob(f"{column}=*") if p.is_dir())
    chosen = found[-days:]
    table = read_in_order(root, column, chosen, source.time_column)
    return derive(table, layout.config.features.derived), chosen


def learned_rows(config: PipelineConfig, table: pa.Table, splits: list[Path]) -> np.ndarray:
    """Which rows of ``table`` are in a train or validation side of the ``splits`` (manifests), matched by the
    split key. A model learned from its train side and stopped early on its validation side: a stratified or
    snapshot split puts such rows among the newest days, where they would flatter it."""
    import pyarrow.parquet as pq

    from flightplan.manifests import SplitManifest

    key = table.select(config.split_key)
    seen = [np.empty(0, dtype=np.uint64)]
    for manifest in map(SplitManifest.read, dict.fromkeys(splits)):
        for side in ("train", "validation"):
            # Cast to the table's types, so that equal values hash alike whatever each file's widths or units.
            seen.append(_row_hashes(pq.read_table(manifest.paths[side], columns=key.column_names).cast(key.schema)))
    return np.isin(_row_hashes(key), np.concatenate(seen))


def _row_hashes(table: pa.Table) -> np.ndarray:
    """A hash per row, equal for equal rows (nulls included) of tables of one schema. Hashed as text: pandas
    hashes an integer column by its dtype, which its nulls change (float64 with, int64 without)."""
    import pyarrow.compute as pc

    texts = [pc.fill_null(column.cast(pa.string()), NULL_TEXT) for column in table.columns]
    return pd.util.hash_pandas_object(pa.table(texts, names=table.column_names).to_pandas(), index=False).to_numpy()


def _training_splits(
    settings: Settings, config: PipelineConfig, candidate: str, champion: str
) -> tuple[list[Path], str | None]:
    """The split manifests of what the two versions trained on, and a note when the champion's cannot be known
    (a version registered by hand, a split since deleted): nothing is then left out for it. The candidate's
    must be known."""
    from mlflow.exceptions import MlflowException

    from flightplan.model.registry import split_manifest_path, training_run_id

    splits, note = [], None
    for version in (candidate, champion):
        try:
            path = Path(split_manifest_path(settings, training_run_id(settings, config.registered_model, version)))
            if not path.is_file():
                raise FileNotFoundError(f"its split manifest {path} is gone")
            splits.append(path)
        except (KeyError, FileNotFoundError, MlflowException) as unknown:
            if version == candidate:
                raise ChallengerRefused(
                    f"{config.registered_model} version {version}: the rows it trained on are unknown ({unknown}), "
                    "so no recent row can be trusted to compare it on"
                ) from unknown
            note = f"champion version {version}: the rows it trained on are unknown ({unknown}); none left out for it"
    return splits, note


def _metrics(model: RegisteredModel, frame: pd.DataFrame) -> dict[str, float]:
    from flightplan.features import encode, encode_label
    from flightplan.model import package
    from flightplan.model.evaluate import compute_metrics

    feature_map = model.feature_map
    predictions = package.predict(package.session(model.onnx), encode(frame, feature_map), feature_map.task)
    threshold = decision_threshold(model.metadata)
    return compute_metrics(feature_map.task, encode_label(frame, feature_map), predictions, threshold)


def candidate_version(job: DeployJob, settings: Settings, config: PipelineConfig) -> str:
    version = job.version or alias_version(settings, config.registered_model, CHALLENGER)
    if version is None:
        raise ChallengerRefused(f"{config.registered_model} has no `{CHALLENGER}` version to deploy")
    return version


def nothing_to_prove(candidate: str, champion: str | None) -> str | None:
    """Why the candidate needs no comparison (no champion yet, or it is the champion already); None if it does."""
    if champion is None:
        return FIRST_CHAMPION
    return ALREADY_CHAMPION.format(candidate) if champion == candidate else None


def compare(job: DeployJob) -> dict[str, Any]:
    """The candidate against the champion on recent labeled data; raises ChallengerRefused when it loses.
    Returns the decision (also written next to the data and logged to MLflow)."""
    settings, config, layout = job.open()
    version = candidate_version(job, settings, config)
    champion_version = alias_version(settings, config.registered_model, CHAMPION)
    versions = {"pipeline": config.name, "candidate": version, "champion": champion_version}
    note = nothing_to_prove(version, champion_version)
    if note is None and champion_version is not None:
        decision = DeploymentDecision(**versions, **_contest(layout, settings, version, champion_version))
    else:
        decision = DeploymentDecision(**versions, accepted=True, reasons=[], note=note)
    path = decision.write(layout.reports("deployment") / f"{job.context.run_id}.json")
    _log_decision(job, settings, config, decision, path)
    if not decision.accepted:
        raise ChallengerRefused(
            f"{config.registered_model} version {version} not promoted over champion version {champion_version}:"
            "\n  - " + "\n  - ".join(decision.reasons)
        )
    return decision.to_json()


def _contest(layout: Layout, settings: Settings, version: str, champion_version: str) -> dict[str, Any]:
    """Both versions scored on the newest labeled days and judged by the deployment margin."""
    from flightplan.model.gate import decide
    from flightplan.model.registry import load_version

    config, spec = layout.config, layout.config.deployment
    recent, days = recent_labeled(layout, spec.recent_days)
    splits, note = _training_splits(settings, config, version, champion_version)
    learned = learned_rows(config, recent, splits)
    frame = recent.filter(pa.array(~learned)).to_pandas()
    if len(frame) < spec.min_rows:
        raise ChallengerRefused(
            f"only {len(frame)} labeled rows in the newest {spec.recent_days} days that neither version trained on "
            f"({learned.sum()} of {len(recent)} left out; need {spec.min_rows}): cannot compare the candidate with "
            "the champion"
        )
    candidate_metrics = _metrics(load_version(settings, config.registered_model, version), frame)
    champion_metrics = _metrics(load_version(settings, config.registered_model, champion_version), frame)
    margin = AcceptanceSpec(champion_margin=spec.margin)
    verdict = decide(candidate_metrics, margin, config.primary_metric, champion_metrics, side="recent")
    return {
        "accepted": verdict.accepted,
        "reasons": verdict.reasons,
        "checks": verdict.checks,
        "rows": len(frame),
        "learned_rows_left_out": int(learned.sum()),
        "note": note,
        "days": [d.isoformat() for d in days],
        "candidate_metrics": candidate_metrics,
        "champion_metrics": champion_metrics,
    }


def _log_decision(
    job: DeployJob, settings: Settings, config: PipelineConfig, decision: DeploymentDecision, path: Path
) -> None:
    """The decision as a run of the pipeline's deployment experiment: versions and verdict as tags, both
    versions' recent metrics, the decision file."""
    import mlflow

    with stage_run(settings, config, job.context, deployment_experiment(config), "compare"):
        mlflow.set_tags(
            {
                "flightplan.candidate_version": decision.candidate,
                "flightplan.champion_version": decision.champion or "-",
                "flightplan.decision": "promote" if decision.accepted else "refused",
                "flightplan.reason": job.reason,
            }
        )
        for prefix, metrics in (("candidate", decision.candidate_metrics), ("champion", decision.champion_metrics)):
            mlflow.log_metrics({f"{prefix}_recent_{k}": v for k, v in (metrics or {}).items() if math.isfinite(v)})
        mlflow.log_artifact(str(path))


def promote(job: DeployJob) -> dict[str, str | None]:
    """`champion` → the candidate, `previous` → the old champion. Running it again changes nothing.

    The `champion` alias moves last: a promotion stopped at any point (its worker killed) leaves the champion
    where it was, and its retry finishes the move."""
    from flightplan.tracking import client

    settings, config, _ = job.open()
    name = config.registered_model
    version = candidate_version(job, settings, config)
    mlflow_client = client(settings)
    champion = alias_version(settings, name, CHAMPION)
    if champion != version:
        mlflow_client.set_model_version_tag(name, version, "flightplan.promoted_by", job.context.run_id)
        if champion is not None:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, champion)
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    result = {"champion": version, "previous": alias_version(settings, name, PREVIOUS)}
    log.info("%s: champion is version %s (previous %s)", name, result["champion"], result["previous"])
    return result


def rollback(job: DeployJob, why: str, promoted: str | None = None) -> dict[str, str | None]:
    """`champion` → `previous` (which is then cleared, so a second rollback cannot go further back by accident);
    the version rolled back loses the `challenger` alias too, if it held it. With ``promoted``, only if the
    champion is still that version (someone may have moved it since)."""
    from flightplan.tracking import client

    settings, config, _ = job.open()
    name = config.registered_model
    previous = alias_version(settings, name, PREVIOUS)
    current = alias_version(settings, name, CHAMPION)
    if promoted is not None and current != promoted:
        raise RolledBack(f"{name}: champion is version {current}, not {promoted} as promoted; left as it is ({why})")
    if previous is None:
        raise RolledBack(f"{name}: no `{PREVIOUS}` version to roll back to; champion stays {current} ({why})")
    mlflow_client = client(settings)
    mlflow_client.set_registered_model_alias(name, CHAMPION, previous)
    mlflow_client.delete_registered_model_alias(name, PREVIOUS)
    if current is not None:
        mlflow_client.set_model_version_tag(name, current, "flightplan.rolled_back", why)
        if alias_version(settings, name, CHALLENGER) == current:  # no shadow or canary traffic for it either
            mlflow_client.delete_registered_model_alias(name, CHALLENGER)
    log.warning("%s: champion moved back from version %s to %s: %s", name, current, previous, why)
    return {"champion": previous, "rolled_back_from": current}


def recent_records(layout: Layout, rows: int) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The newest ``rows`` labeled rows, and the same rows as a client sends them to the API."""
    from flightplan.serving.inputs import json_records, request_fields

    table, _ = recent_labeled(layout, layout.config.deployment.recent_days)
    recent = table.slice(max(0, len(table) - rows)).to_pandas()
    return recent, json_records(recent, list(request_fields(layout.config)))


def loaded_versions(job: DeployJob) -> dict[str, dict[str, Any]]:
    """Has the service load what the pipeline's aliases point at now; its answer per alias (``serving``: the
    version it serves, ``error``: why it kept another)."""
    settings, config, _ = job.open()
    try:
        with service_client(settings, "admin") as http:
            response = http.post("/admin/reload")
    except Exception as err:
        raise ServiceCheckFailed(f"the service at {settings.service_url} cannot be reached: {err}") from err
    if response.status_code != 200:
        raise ServiceCheckFailed(f"reload at {settings.service_url}: HTTP {response.status_code} {response.text}")
    loaded = {r.get("alias", CHAMPION): r for r in response.json() if r["pipeline"] == config.name}
    if CHAMPION not in loaded:
        raise ServiceCheckFailed(f"the service at {settings.service_url} does not serve pipeline '{config.name}'")
    return loaded


def reload_service(job: DeployJob) -> str:
    """Asks the service to load the champion now; returns the version it serves, which must be the champion."""
    settings, config, _ = job.open()
    expected = alias_version(settings, config.registered_model, CHAMPION)
    result = loaded_versions(job)[CHAMPION]
    if result["serving"] != expected:
        raise ServiceCheckFailed(
            f"the service serves version {result['serving']}, not the champion {expected}: {result['error']}"
        )
    return str(expected)


def smoke_test(job: DeployJob) -> dict[str, Any]:
    """Recent records through the live API: every one answered by the champion with a sane output."""
    settings, config, layout = job.open()
    expected = alias_version(settings, config.registered_model, CHAMPION)
    _, records = recent_records(layout, config.deployment.smoke_rows)
    with service_client(settings) as http:
        # Asked of the champion: a canary share would otherwise answer some requests with the challenger.
        response = http.post(
            f"/v1/{config.name}/predict/batch", json={"records": records}, headers={ALIAS_HEADER: CHAMPION}
        )
    problems = []
    if response.status_code != 200:
        problems.append(f"HTTP {response.status_code}: {response.text[:500]}")
    else:
        body = response.json()
        if body["model_version"] != expected:
            problems.append(f"answered by version {body['model_version']}, not the champion {expected}")
        if len(body["predictions"]) != len(records):
            problems.append(f"{len(body['predictions'])} answers for {len(records)} records")
        probabilities = [p["probability"] for p in body["predictions"] if p["probability"] is not None]
        if any(not (0.0 <= p <= 1.0) for p in probabilities):
            problems.append("probabilities outside [0, 1]")
    if problems:
        raise ServiceCheckFailed(f"smoke test of version {expected} failed: " + "; ".join(problems))
    return {"version": expected, "records": len(records)}
