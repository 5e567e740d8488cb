"""The model-engineering stages as DAG tasks (or a command) call them.

The first stage opens the MLflow run of the DAG run and returns its id; every later stage takes that id,
works in the run's folder (``Layout.model_run``), logs into the same MLflow run, and returns a path or
an id. Nothing but those strings travels between tasks."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from flightplan.config import PipelineConfig
from flightplan.data.batches import in_fixed_order
from flightplan.data.partitions import fresh_dir
from flightplan.features import (
    FeatureMap,
    LabelLeak,
    build_feature_map,
    derive,
    encode,
    encode_label,
    gain_shares,
    input_columns,
    leaking_features,
    select,
)
from flightplan.layout import Layout, open_pipeline
from flightplan.manifests import (
    AcceptanceVerdict,
    BestTrial,
    Evaluation,
    FeatureSelection,
    LatestSplit,
    ParityReport,
    RunFile,
    SplitManifest,
)
from flightplan.settings import Settings
from flightplan.tracking import RunContext, lineage_tags, model_run

if TYPE_CHECKING:
    from flightplan.model.registry import RegisteredModel
    from flightplan.model.tune import TrialResult, TuningResult

log = logging.getLogger(__name__)
SIDES = ("train", "validation", "test")
BOOSTER_FILE = "booster.ubj"
RunFileT = TypeVar("RunFileT", bound=RunFile)


class ModelRejected(RuntimeError):
    """The acceptance gate said no; the message lists each reason."""


class ParityFailed(RuntimeError):
    """The ONNX model does not predict what the native model predicts."""


@dataclass(frozen=True)
class ModelJob:
    pipeline: str
    context: RunContext = field(default_factory=RunContext)
    overrides: dict[str, Any] | None = None
    split_manifest: str | None = None  # from the splits asset event; the latest split when None
    reason: str = "manual"
    fresh: bool = False  # tune and train even when an earlier run had the same data, config and code

    def open(self) -> tuple[Settings, PipelineConfig, Layout]:
        return open_pipeline(self.pipeline, self.overrides)

    def split(self, layout: Layout) -> tuple[SplitManifest, Path]:
        """The split this job trains on, the one its splits event named or else the newest: its manifest, and
        where the manifest is."""
        path = Path(self.split_manifest or LatestSplit.read(layout.splits / "latest.json").manifest)
        return SplitManifest.read(path), path


@dataclass(frozen=True)
class Frames:
    """The three sides of a run as pandas frames (features, label, slices, time) and the feature map."""

    sides: dict[str, pd.DataFrame]
    feature_map: FeatureMap

    def matrix(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        frame = self.sides[side]
        return encode(frame, self.feature_map), encode_label(frame, self.feature_map)


@dataclass(frozen=True)
class Workspace:
    """What every stage after ``features`` starts from: the config, the run's folder and its frames."""

    settings: Settings
    config: PipelineConfig
    layout: Layout
    run_dir: Path
    frames: Frames

    def read(self, kind: type[RunFileT]) -> RunFileT:
        """The file of ``kind`` an earlier stage wrote into the run's folder."""
        return kind.read(self.run_dir / kind.FILE)

    def booster(self) -> Any:
        import xgboost as xgb

        return xgb.Booster(model_file=str(self.run_dir / BOOSTER_FILE))


def open_run(job: ModelJob, run_id: str) -> Workspace:
    settings, config, layout = job.open()
    run_dir = layout.model_run(run_id)
    feature_map = FeatureMap.load(run_dir / "feature_map.json")
    sides = {side: pd.read_parquet(run_dir / "frames" / f"{side}.parquet") for side in SIDES}
    return Workspace(settings, config, layout, run_dir, Frames(sides, feature_map))


def read_side(path: str, config: PipelineConfig) -> pd.DataFrame:
    """One side of the split in a fixed row order (time, then every column), so that the same split
    always gives the same model whatever order the files were written in."""
    time_column = config.source.time_column
    lead = [time_column] if time_column else []
    wanted = set(input_columns(config)) | {config.label.name, *lead}
    wanted |= {s for s in config.model.slices if s in config.column_names}
    table = pads.dataset(path).to_table(columns=[*lead, *sorted(wanted - set(lead))])
    table = in_fixed_order(table, time_column)
    return derive(table, config.features.derived).to_pandas()


def read_sides(manifest: SplitManifest, config: PipelineConfig) -> dict[str, pd.DataFrame]:
    """The split's three sides, the train side cut to its last ``model.window_days`` when the config sets them."""
    sides = {side: read_side(manifest.paths[side], config) for side in SIDES}
    window = config.model.window_days
    if window:
        time_column = sides["train"][config.source.time_column]
        sides["train"] = sides["train"][time_column >= time_column.max() - timedelta(days=window)]
    return sides


def refuse_leaks(train: pd.DataFrame, candidates: FeatureMap, config: PipelineConfig) -> None:
    """Raises LabelLeak when candidate features are copies of the label on the train side."""
    leaking = leaking_features(train, candidates)
    if leaking:
        raise LabelLeak(
            f"{config.name}: feature(s) {leaking} are identical to the label '{config.label.name}' on the "
            "train side; a model would copy them and fail on new data: list them under features.leakage"
        )


def select_on_gain(candidates: Frames, config: PipelineConfig) -> FeatureSelection:
    """Fits a quick booster on every candidate feature and keeps those that carry enough of its total gain;
    returns the selection: the features kept, those dropped and each candidate's gain share."""
    from flightplan.model.train import booster_params, fit, matrices

    spec, feature_map = config.model, candidates.feature_map
    dtrain, dval = matrices(feature_map, candidates.matrix("train"), candidates.matrix("validation"))
    quick = fit(
        booster_params(feature_map, spec.tuning.fixed, {}, spec.tuning.seed), dtrain, dval, spec.selection.rounds
    )
    gains = quick.get_score(importance_type="total_gain")
    shares = gain_shares({name: float(np.sum(gain)) for name, gain in gains.items()}, feature_map)
    kept, dropped = select(shares, spec.selection.min_gain_share, spec.selection.keep_at_least)
    return FeatureSelection(kept=kept, dropped=dropped, gain_share=shares)


def features(job: ModelJob) -> str:
    """Read the split, build the feature map, select features on gain; returns the MLflow run id."""
    import mlflow

    settings, config, layout = job.open()
    manifest, manifest_path = job.split(layout)
    with model_run(settings, config, job.context) as run:
        run_id = run.info.run_id
        run_dir = fresh_dir(layout.model_run(run_id))
        sides = read_sides(manifest, config)
        candidates = build_feature_map(sides["train"], config)
        refuse_leaks(sides["train"], candidates, config)
        selection = select_on_gain(Frames(sides, candidates), config)
        kept, dropped = selection.kept, selection.dropped
        feature_map = candidates.keep(kept)
        for side, frame in sides.items():
            (run_dir / "frames").mkdir(exist_ok=True)
            frame.to_parquet(run_dir / "frames" / f"{side}.parquet", index=False)
        feature_map.save(run_dir / "feature_map.json")
        selection.write(run_dir / selection.FILE)
        mlflow.set_tags(
            {
                "flightplan.split_manifest": str(manifest_path),
                "flightplan.data_fingerprint": manifest.fingerprint,
                "flightplan.reason": job.reason,
            }
        )
        mlflow.log_params(
            {
                "pipeline": config.name,
                "task": config.label.task,
                "split_id": manifest.split_id,
                "window_days": config.model.window_days or "all",
                "engine": config.model.engine,
                "features_candidates": len(candidates.features),
                "features_kept": len(kept),
            }
        )
        mlflow.log_metrics({f"{side}_rows": len(frame) for side, frame in sides.items()})
        mlflow.log_artifact(str(run_dir / "selection.json"), "features")
        mlflow.log_artifact(str(run_dir / "feature_map.json"), "features")
        log.info("features: kept %d of %d; dropped %s", len(kept), len(candidates.features), dropped)
    return str(run_id)


def forget_earlier_trials(mlflow_client: Any, experiment: str, run_id: str) -> None:
    """Deletes the trials logged under the run: a retried search replaces those of its interrupted attempt, so
    the run shows one search."""
    earlier = f"tags.mlflow.parentRunId = '{run_id}' and tags.`flightplan.role` = 'trial'"
    for trial_run in mlflow_client.search_runs([experiment], filter_string=earlier, max_results=5000):
        mlflow_client.delete_run(trial_run.info.run_id)


def keep_best(result: TuningResult, run_dir: Path) -> Path:
    """Writes best.json (the best trial's parameters, rounds and score) and logs the search's outcome into the
    active run; returns best.json's path."""
    import mlflow

    best = BestTrial(
        params=result.best.params,
        rounds=result.best.rounds,
        metric=result.metric,
        score=result.best.score,
        trial=result.best.number,
    )
    path = best.write(run_dir / best.FILE)
    mlflow.log_metrics(
        {
            "tuning_trials": len(result.trials),
            "tuning_pruned": sum(t.state == "pruned" for t in result.trials),
            f"tuning_best_validation_{result.metric}": float(result.best.score or 0.0),
        }
    )
    mlflow.log_artifact(str(path), "tuning")
    return path


def tuned_run(job: ModelJob, work: Workspace, run_id: str) -> str | None:
    """The newest earlier run whose split, effective config and code were this run's and which still has its
    best trial and booster; None when there is none or the job asks for fresh work."""
    from flightplan.model import cache

    if job.fresh:
        return None
    manifest, _ = job.split(work.layout)
    key = cache.cache_key(manifest.fingerprint, work.config)
    return cache.trained_run(work.settings, work.layout, key, run_id, (BestTrial.FILE, BOOSTER_FILE))


def tune(job: ModelJob, run_id: str) -> str:
    """Optuna search, each trial a nested MLflow run; returns the path of best.json (an earlier run's when it
    had the same inputs: :mod:`flightplan.model.cache`)."""
    from mlflow.entities import Metric, Param, RunTag

    from flightplan.model.cache import reuse
    from flightplan.model.train import matrices, stopping_metric
    from flightplan.model.tune import tune as search
    from flightplan.tracking import client

    work = open_run(job, run_id)
    settings, config, run_dir, frames = work.settings, work.config, work.run_dir, work.frames
    spec = config.model.tuning
    mlflow_client = client(settings)
    search_metric = stopping_metric(frames.feature_map.task)
    with model_run(settings, config, job.context) as run:
        earlier = tuned_run(job, work, run_id)
        if earlier:
            return str(reuse(work.layout, "tune", earlier, run_id, BestTrial.FILE))
        experiment = run.info.experiment_id
        forget_earlier_trials(mlflow_client, experiment, run_id)
        dtrain, dval = matrices(frames.feature_map, frames.matrix("train"), frames.matrix("validation"))

        def record(trial: TrialResult) -> None:
            child = mlflow_client.create_run(
                experiment,
                run_name=f"trial {trial.number}",
                tags={**lineage_tags(config, job.context), "mlflow.parentRunId": run_id, "flightplan.role": "trial"},
            )
            now = int(time.time() * 1000)
            metrics = [Metric("trial_seconds", trial.seconds, now, 0)]
            if trial.score is not None:
                metrics.append(Metric(f"validation_{search_metric}", trial.score, now, 0))
                metrics.append(Metric("best_rounds", float(trial.rounds or 0), now, 0))
            mlflow_client.log_batch(
                child.info.run_id,
                metrics=metrics,
                params=[Param(k, str(v)) for k, v in trial.params.items()],
                tags=[RunTag("flightplan.trial_state", trial.state)],
            )
            mlflow_client.set_terminated(child.info.run_id, "FINISHED" if trial.state == "complete" else "KILLED")

        result = search(dtrain, dval, frames.feature_map, spec, spec.trials, spec.timeout_minutes * 60, record)
        path = keep_best(result, run_dir)
    return str(path)


def fit_booster(work: Workspace, params: dict[str, Any], rounds: int, run_id: str) -> Path:
    """Trains the booster on the run's frames, its per-round metrics streamed to MLflow; returns its file."""
    import mlflow

    from flightplan.model.train import RoundReporter, fit, matrices
    from flightplan.tracking import MetricSink

    settings, spec, frames = work.settings, work.config.model, work.frames
    sink = MetricSink(settings.mlflow_tracking_uri, run_id)
    started = time.perf_counter()
    if spec.engine == "spark":
        from flightplan.model.spark_train import fit_on_spark
        from flightplan.spark import get_spark

        booster = fit_on_spark(
            get_spark(settings, classic=True),  # xgboost.spark needs the JVM's objects: not Spark Connect
            work.run_dir / "frames",
            frames.feature_map,
            params,
            rounds,
            spec.spark_workers,
            [RoundReporter(sink)],
        )
    else:
        dtrain, dval = matrices(frames.feature_map, frames.matrix("train"), frames.matrix("validation"))
        booster = fit(params, dtrain, dval, rounds, callbacks=[RoundReporter(sink)])
    mlflow.log_metric("train_seconds", time.perf_counter() - started)
    path = work.run_dir / BOOSTER_FILE
    booster.save_model(path)
    return path


def train(job: ModelJob, run_id: str) -> str:
    """The final booster with the best parameters (an earlier run's when it had the same inputs:
    :mod:`flightplan.model.cache`); returns its path."""
    import mlflow

    from flightplan.model.cache import KEY_TAG, cache_key, reuse, reused_run
    from flightplan.model.train import booster_params
    from flightplan.tracking import log_dataset

    work = open_run(job, run_id)
    config, frames = work.config, work.frames
    best = work.read(BestTrial)
    params = booster_params(frames.feature_map, config.model.tuning.fixed, best.params, config.model.tuning.seed)
    manifest, _ = job.split(work.layout)
    with model_run(work.settings, config, job.context):
        earlier = reused_run("tune")  # the run whose best trial this one's is: its booster is the one to reuse
        if earlier:
            path = reuse(work.layout, "train", earlier, run_id, BOOSTER_FILE)
        else:
            path = fit_booster(work, params, best.rounds, run_id)
        mlflow.log_params(
            {**{k: v for k, v in params.items() if k not in ("nthread", "eval_metric")}, "rounds": best.rounds}
        )
        fingerprint = manifest.sides["train"].fingerprint
        log_dataset(frames.sides["train"], manifest.paths["train"], "train", fingerprint, "training")
        mlflow.log_artifact(str(path), "booster")
        # Last: from now on, a later run with these inputs may reuse this one's outputs.
        mlflow.set_tag(KEY_TAG, cache_key(manifest.fingerprint, config))
    return str(path)


def side_predictions(work: Workspace) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The labels of each side and the run's booster's predictions for it."""
    from flightplan.model.train import predict

    frames = work.frames
    booster = work.booster()
    labels, predictions = {}, {}
    for side in SIDES:
        matrix, labels[side] = frames.matrix(side)
        predictions[side] = predict(booster, matrix, frames.feature_map.task)
    return labels, predictions


def card_facts(job: ModelJob, work: Workspace, run_id: str, evaluation: Evaluation) -> dict[str, Any]:
    """What the model card tells of a run: its lineage, data, features and training, and its ``evaluation``
    (evaluation.json's metrics, threshold and slices)."""
    from flightplan.tracking import git_commit

    config, feature_map = work.config, work.frames.feature_map
    manifest, _ = job.split(work.layout)
    best = work.read(BestTrial)
    return {
        "registered_model": config.registered_model,
        "pipeline": config.name,
        "task": feature_map.task,
        "label": config.label.name,
        "run_id": run_id,
        "config_hash": config.fingerprint(),
        "git_commit": git_commit(),
        "split_id": manifest.split_id,
        "split_strategy": manifest.strategy,
        "data_fingerprint": manifest.fingerprint,
        "sides": {side: stats.to_json() for side, stats in manifest.sides.items()},
        "features": feature_map.names,
        "dropped_features": work.read(FeatureSelection).dropped,
        "rounds": best.rounds,
        "params": best.params,
        "threshold": evaluation.threshold,
        "metrics": evaluation.metrics,
        "primary_metric": config.primary_metric,
        "slices": evaluation.slices,
    }


def evaluate(job: ModelJob, run_id: str) -> str:
    """Metrics on validation and test, per slice, plots and the model card; returns evaluation.json's path."""
    import mlflow

    from flightplan.model.evaluate import best_f1_threshold, compute_metrics, model_card, plot_files, slice_metrics
    from flightplan.scoring import save_reference

    work = open_run(job, run_id)
    settings, config, run_dir, frames = work.settings, work.config, work.run_dir, work.frames
    task = frames.feature_map.task
    labels, predictions = side_predictions(work)
    threshold = None
    if task == "binary":
        threshold = config.model.threshold or best_f1_threshold(labels["validation"], predictions["validation"])
    cut = threshold if threshold is not None else 0.5
    metrics = {side: compute_metrics(task, labels[side], predictions[side], cut) for side in SIDES}
    save_reference(frames.sides["train"], predictions["train"], frames.feature_map, cut, run_dir)
    slices = slice_metrics(task, frames.sides["test"], labels["test"], predictions["test"], config.model.slices, cut)
    evaluation = Evaluation(metrics=metrics, threshold=threshold, slices=slices)
    gain_share = work.read(FeatureSelection).gain_share
    kept = {name: gain_share[name] for name in frames.feature_map.names}
    with model_run(settings, config, job.context):
        for side, values in metrics.items():
            mlflow.log_metrics({f"{side}_{name}": value for name, value in values.items() if np.isfinite(value)})
        if threshold is not None:
            mlflow.log_metric("threshold", threshold)
        plots = plot_files(task, labels["test"], predictions["test"], cut, kept, run_dir / "plots")
        for plot in plots:
            mlflow.log_artifact(str(plot), "plots")
        (run_dir / "model_card.md").write_text(model_card(card_facts(job, work, run_id, evaluation)))
        mlflow.log_artifact(str(run_dir / "model_card.md"))
        path = evaluation.write(run_dir / evaluation.FILE)
        mlflow.log_artifact(str(path))
    return str(path)


def champion_test_metrics(work: Workspace, champion: RegisteredModel) -> dict[str, float]:
    """The champion's metrics on the run's test side; raises ModelRejected when that side lacks its features."""
    from flightplan.model import package
    from flightplan.model.evaluate import compute_metrics
    from flightplan.model.registry import decision_threshold, native_booster
    from flightplan.model.train import predict

    test = work.frames.sides["test"]
    missing = [name for name in champion.feature_map.names if name not in test.columns]
    if missing:
        raise ModelRejected(
            f"cannot compare with champion version {champion.version}: the test set lacks its features {missing}"
        )
    # Scored by its native booster, as evaluate scored the challenger: onnxruntime's float32 answers move
    # the last digits of a metric, and the same model retrained would then lose to itself.
    matrix, task = encode(test, champion.feature_map), champion.feature_map.task
    booster = native_booster(work.settings, work.config.registered_model, champion.version)
    predictions = (
        predict(booster, matrix, task)
        if booster is not None
        else package.predict(package.session(champion.onnx), matrix, task)
    )
    threshold = decision_threshold(champion.metadata)
    return compute_metrics(task, encode_label(test, work.frames.feature_map), predictions, threshold)


def accept(job: ModelJob, run_id: str) -> str:
    """The acceptance gate on the test set; raises ModelRejected (after recording why) when it says no."""
    import mlflow

    from flightplan.model.gate import decide
    from flightplan.model.registry import CHAMPION, load_alias

    work = open_run(job, run_id)
    settings, config, run_dir = work.settings, work.config, work.run_dir
    evaluation = work.read(Evaluation)
    champion = load_alias(settings, config.registered_model, CHAMPION)
    champion_metrics = None if champion is None else champion_test_metrics(work, champion)
    verdict = decide(evaluation.metrics["test"], config.model.acceptance, config.primary_metric, champion_metrics)
    recorded = AcceptanceVerdict(**verdict.to_dict(), champion_version=champion.version if champion else None)
    path = recorded.write(run_dir / recorded.FILE)
    with model_run(settings, config, job.context):
        mlflow.set_tags(
            {
                "flightplan.verdict": "accepted" if verdict.accepted else "rejected",
                "flightplan.verdict_reasons": "; ".join(verdict.reasons) or "-",
            }
        )
        if champion_metrics is not None:
            mlflow.log_metric(f"champion_test_{config.primary_metric}", champion_metrics[config.primary_metric])
        mlflow.log_artifact(str(path))
    if not verdict.accepted:
        raise ModelRejected(
            f"{config.registered_model}: model of run {run_id} rejected, not registered:\n  - "
            + "\n  - ".join(verdict.reasons)
        )
    return str(path)


def package_onnx(job: ModelJob, run_id: str) -> str:
    """Convert to ONNX, check parity on the whole test set, log the ONNX model; returns its model URI."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    from flightplan.model import package
    from flightplan.model.train import predict
    from flightplan.model.tree_onnx import booster_to_onnx

    work = open_run(job, run_id)
    settings, config, run_dir, frames = work.settings, work.config, work.run_dir, work.frames
    task = frames.feature_map.task
    booster = work.booster()
    onnx_bytes = booster_to_onnx(booster, len(frames.feature_map.features))
    matrix, _ = frames.matrix("test")
    native = predict(booster, matrix, task)
    # One thread, as the service runs it: more would split each row's sum of trees and change its last bits.
    onnx_session = package.session(onnx_bytes, threads=1)
    converted = package.predict(onnx_session, matrix, task)
    parity = package.parity(native, converted, config.model.parity_tolerance)
    (run_dir / "model.onnx").write_bytes(onnx_bytes)
    report = ParityReport(**parity.__dict__, ok=parity.ok).write(run_dir / ParityReport.FILE)
    evaluation = work.read(Evaluation)
    with model_run(settings, config, job.context):
        mlflow.log_metrics({"onnx_parity_max_abs_diff": parity.max_abs_diff, "onnx_parity_rows": parity.rows})
        mlflow.log_artifact(str(report))
        if not parity.ok:
            raise ParityFailed(
                f"ONNX differs from the native model by up to {parity.max_scaled_diff:.3g} (scaled) on "
                f"{parity.rows:,} test rows; tolerance {parity.tolerance:g}"
            )
        example = matrix[:5]
        info = mlflow.onnx.log_model(
            onnx.load_from_string(onnx_bytes),
            name="model",
            signature=infer_signature(example, package.predict(onnx_session, example, task)),
            input_example=example,
            metadata={
                "feature_map": json.loads(frames.feature_map.to_json()),
                "threshold": evaluation.threshold,
                "pipeline": config.name,
            },
        )
    return str(info.model_uri)


def register(job: ModelJob, run_id: str, model_uri: str) -> dict[str, str]:
    """A new registry version with the `challenger` alias and lineage tags."""
    import mlflow

    from flightplan.model.registry import CHALLENGER, REASON_TAG
    from flightplan.model.registry import register as register_version

    settings, config, layout = job.open()
    manifest, manifest_path = job.split(layout)
    tags = {
        **lineage_tags(config, job.context),
        "flightplan.run_id": run_id,
        "flightplan.split_manifest": str(manifest_path),
        "flightplan.data_fingerprint": manifest.fingerprint,
        REASON_TAG: job.reason,
    }
    version = register_version(settings, config.registered_model, model_uri, tags)
    with model_run(settings, config, job.context):
        mlflow.set_tags({"flightplan.registered_version": version, "flightplan.alias": CHALLENGER})
    return {"name": config.registered_model, "version": version, "alias": CHALLENGER, "model_uri": model_uri}
