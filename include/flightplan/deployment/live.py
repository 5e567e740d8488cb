"""The live gate: a candidate proven on live traffic before it is promoted (``deployment.live_rows`` above 0).

The candidate becomes the `challenger`, which the service answers with in shadow beside the champion, or in
its place for a canary share, each answer logged under its version. Once ``live_rows`` of the rows both
versions answered have their true label, both are judged on exactly those rows: the candidate is promoted only
if its gain on the primary metric exceeds ``deployment.margin`` with ``live_confidence``, by a paired bootstrap
(the rows are drawn again with replacement, the same draw for both versions, so that what the rows have in
common cancels out). The decision, its test and its rows go to MLflow and next to the data."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from flightplan.config import HIGHER_IS_BETTER, PipelineConfig
from flightplan.deployment.stages import (
    ChallengerRefused,
    DeployJob,
    ServiceCheckFailed,
    candidate_version,
    deployment_experiment,
    loaded_versions,
    nothing_to_prove,
)
from flightplan.features import FeatureMap
from flightplan.layout import Layout
from flightplan.manifests import LiveDecision
from flightplan.model.evaluate import Metric
from flightplan.model.registry import CHALLENGER, CHAMPION, alias_version
from flightplan.settings import Settings
from flightplan.tracking import stage_run

log = logging.getLogger(__name__)

RESAMPLES = 2000  # bootstrap draws: the p-value's own error near 0.05 is then about 0.005
SEED = 20131  # the same rows give the same test
Score = Callable[[np.ndarray], float]  # a version's metric on a draw of rows (their numbers)
MAX_ROWS = 20_000  # rows a test is run on at most
# A decision's tag in MLflow, by gate and whether its candidate won.
DECISIONS = {"live": {True: "promote", False: "refused"}, "watch": {True: "rolled back", False: "kept"}}


@dataclass(frozen=True)
class PairedTest:
    """A paired bootstrap of the candidate's gain over the champion on one metric, over the same rows. The gain
    is counted in the metric's better direction (a lower log loss is a gain)."""

    metric: str
    rows: int
    candidate: float
    champion: float
    gain: float
    gain_lower: float  # the one-sided lower bound of the gain at ``confidence``
    p_value: float  # how often a draw's gain does not exceed the margin
    margin: float
    confidence: float
    resamples: int

    @property
    def passed(self) -> bool:
        return self.gain > self.margin and self.p_value <= 1 - self.confidence


def paired_bootstrap(
    metric: str,
    scores: tuple[Score, Score],  # the candidate's metric of a draw of rows, and the champion's
    rows: int,
    margin: float,
    confidence: float,
    resamples: int = RESAMPLES,
) -> PairedTest:
    """The candidate's gain over the champion on ``metric``, and how sure it exceeds ``margin``: each draw takes
    ``rows`` row numbers with replacement and scores both versions on that same draw. ``p_value`` is the share of
    draws whose gain does not exceed the margin. A draw whose metric is undefined (a ranking metric of a draw
    holding one class) is left out."""
    sign = 1.0 if metric in HIGHER_IS_BETTER else -1.0

    def gain(draw: np.ndarray) -> tuple[float, float, float]:
        candidate, champion = scores[0](draw), scores[1](draw)
        return sign * (candidate - champion), candidate, champion

    if rows == 0:
        raise ChallengerRefused(f"no labeled live row to judge {metric} on")
    observed, candidate, champion = gain(np.arange(rows))
    rng = np.random.default_rng(SEED)
    # Drawn a block at a time: all draws at once would take resamples x rows row numbers of memory.
    gains = np.array([gain(draw)[0] for _ in range(0, resamples, 100) for draw in rng.integers(0, rows, (100, rows))])
    gains = gains[:resamples][np.isfinite(gains[:resamples])]
    if not math.isfinite(observed) or len(gains) == 0:
        raise ChallengerRefused(f"live {metric} is undefined on these rows (one class only?): no comparison")
    return PairedTest(
        metric=metric,
        rows=rows,
        candidate=candidate,
        champion=champion,
        gain=observed,
        gain_lower=float(np.quantile(gains, 1 - confidence)),
        p_value=float((np.sum(gains <= margin) + 1) / (len(gains) + 1)),
        margin=margin,
        confidence=confidence,
        resamples=len(gains),
    )


class Contest(NamedTuple):
    settings: Settings
    config: PipelineConfig
    layout: Layout
    candidate: str
    champion: str | None


def _contest(job: DeployJob) -> Contest:
    settings, config, layout = job.open()
    champion = alias_version(settings, config.registered_model, CHAMPION)
    return Contest(settings, config, layout, candidate_version(job, settings, config), champion)


def start(job: DeployJob) -> dict[str, Any]:
    """Makes the candidate the `challenger` (a version asked for by hand takes the alias) and has the service
    load it, so that it answers in shadow or canary from now on."""
    settings, config, _, candidate, champion = _contest(job)
    note = nothing_to_prove(candidate, champion)
    if note is None:
        serve_as_challenger(job, settings, config, candidate)
    return {"candidate": candidate, "champion": champion, "note": note}


def serve_as_challenger(job: DeployJob, settings: Settings, config: PipelineConfig, version: str) -> None:
    """Points the `challenger` alias at ``version`` and has the service load it."""
    from flightplan.tracking import client

    if alias_version(settings, config.registered_model, CHALLENGER) != version:
        client(settings).set_registered_model_alias(config.registered_model, CHALLENGER, version)
        log.info("%s: version %s is the challenger now", config.registered_model, version)
    loaded = loaded_versions(job).get(CHALLENGER, {"serving": None, "error": "no challenger slot"})
    if loaded["serving"] != version:
        raise ServiceCheckFailed(
            f"the service did not load challenger version {version}: it has {loaded['serving']} ({loaded['error']})"
        )


def counted(job: DeployJob, since: datetime) -> dict[str, Any]:  # job: its version pinned by the run
    """How many labeled live rows the candidate has of the ``live_rows`` it needs (``done`` once it has them, or
    when there is nothing to prove), and how long to wait before counting again. Raises ChallengerRefused once
    ``live_wait_hours`` have passed since ``since`` without them."""
    settings, config, _, candidate, champion = _contest(job)
    spec = config.deployment
    count = {
        "candidate": candidate,
        "champion": champion,
        "needed": spec.live_rows,
        "poll_seconds": spec.live_poll_seconds,
    }
    if nothing_to_prove(candidate, champion) is not None:
        return {**count, "labeled": 0, "done": True}
    labeled = labeled_pairs(settings, config, candidate, str(champion)).num_rows
    if labeled < spec.live_rows and datetime.now(UTC) >= since + timedelta(hours=spec.live_wait_hours):
        raise ChallengerRefused(
            f"{config.registered_model} version {candidate}: {labeled} labeled live rows in {spec.live_wait_hours:g} h "
            f"of the {spec.live_rows} the live gate needs (deployment.live_rows); not promoted"
        )
    log.info("%s: %d of %d labeled live rows", config.name, labeled, spec.live_rows)
    return {**count, "labeled": labeled, "done": labeled >= spec.live_rows}


def labeled_pairs(
    settings: Settings, config: PipelineConfig, candidate: str, champion: str, since: datetime | None = None
) -> pa.Table:
    """The rows both versions answered (``since`` then, if given) and that have a true label, the candidate's
    answers first."""
    import pyarrow.compute as pc

    from flightplan.prediction_log import paired_answers

    pairs = paired_answers(settings.predictions_db_url, config.name, candidate, champion, since)
    return pairs.filter(pc.is_valid(pairs["label"]))


def decide(job: DeployJob) -> dict[str, Any]:
    """The candidate against the champion on the labeled live rows both answered; raises ChallengerRefused when
    it does not beat it. Returns the decision (also written next to the data and logged to MLflow)."""
    settings, config, layout, candidate, champion = _contest(job)
    versions = {"pipeline": config.name, "candidate": candidate, "champion": champion, "decided_at": datetime.now(UTC)}
    note = nothing_to_prove(candidate, champion)
    pairs = None
    if note is not None:
        decision = LiveDecision(**versions, accepted=True, reasons=[], note=note)
    else:
        pairs = labeled_pairs(settings, config, candidate, str(champion))
        if pairs.num_rows < config.deployment.live_rows:  # the champion moved since the rows were counted
            raise ChallengerRefused(
                f"{pairs.num_rows} labeled live rows of version {candidate} beside champion version {champion}, "
                f"of the {config.deployment.live_rows} the live gate needs: not promoted"
            )
        test = paired_test(settings, config, candidate, str(champion), pairs)
        reasons = [] if test.passed else [_refusal(test)]
        decision = LiveDecision(**versions, accepted=test.passed, reasons=reasons, test=asdict(test))
    path = decision.write(live_decision_path(layout, job.context.run_id, decision.gate))
    log_decision(job, settings, config, decision, path, pairs)
    if not decision.accepted:
        raise ChallengerRefused(
            f"{config.registered_model} version {candidate} not promoted over champion version {champion} on live "
            "rows:\n  - " + "\n  - ".join(decision.reasons)
        )
    return decision.to_json()


def live_decision_path(layout: Layout, run_id: str, gate: str) -> Path:
    """Where a decision taken on live rows is kept: a folder of their own beside the offline decisions."""
    return layout.reports("deployment") / "live" / f"{run_id}-{gate}.json"


def _refusal(test: PairedTest) -> str:
    return (
        f"live {test.metric} on {test.rows} rows: candidate {test.candidate:.4f}, champion {test.champion:.4f}, "
        f"gain {test.gain:+.4f} (lower bound {test.gain_lower:+.4f} at {test.confidence:.0%}, p = {test.p_value:.3f})"
        f" does not exceed the margin {test.margin:g} with {test.confidence:.0%} confidence"
    )


def paired_test(
    settings: Settings, config: PipelineConfig, candidate: str, champion: str, pairs: pa.Table
) -> PairedTest:
    """The paired bootstrap of the two versions' logged answers on ``pairs`` (``labeled_pairs``): at most
    MAX_ROWS of them, a seeded sample beyond (the test's error is then far below any margin worth setting)."""
    from flightplan.model.evaluate import METRICS
    from flightplan.model.registry import decision_threshold, version_metadata

    if pairs.num_rows > MAX_ROWS:
        pairs = pairs.take(np.sort(np.random.default_rng(SEED).choice(pairs.num_rows, MAX_ROWS, replace=False)))
    metric = config.primary_metric
    scores: list[Score] = []
    for version, side in ((candidate, "first"), (champion, "second")):
        metadata, feature_map = version_metadata(settings, config.registered_model, version)
        y, prediction = logged_answers(feature_map, pairs, side)  # labels coded by this version's own classes
        scores.append(_scored(METRICS[feature_map.task][metric], decision_threshold(metadata), y, prediction))
    spec = config.deployment
    return paired_bootstrap(metric, (scores[0], scores[1]), pairs.num_rows, spec.margin, spec.live_confidence)


def _scored(metric: Metric, cut: float, y: np.ndarray, prediction: np.ndarray) -> Score:
    """A version's metric of a draw of rows."""
    return lambda draw: metric(y[draw], prediction[draw], cut)


def logged_answers(feature_map: FeatureMap, pairs: pa.Table, side: str) -> tuple[np.ndarray, np.ndarray]:
    """The labels and one version's logged answers as its metrics take them: P(1) for a binary model, values
    for a regression, and for a multiclass model its chosen class (the log keeps no other class's probability)."""
    import pandas as pd

    from flightplan.features import encode_label
    from flightplan.monitoring.window import decoded_values

    y = encode_label(pd.DataFrame({feature_map.label: decoded_values(pairs["label"])}), feature_map)
    if feature_map.task == "binary":
        return y, pairs[f"{side}_probability"].to_numpy().astype(np.float64)
    chosen = pd.Series(decoded_values(pairs[f"{side}_prediction"]))
    if feature_map.task == "regression":
        return y, pd.to_numeric(chosen).to_numpy(dtype=np.float64)
    # A class this version's map does not know is refused by name (a code of -1 would read as the last class).
    codes = encode_label(pd.DataFrame({feature_map.label: chosen}), feature_map).astype(np.int64)
    return y, np.eye(len(feature_map.classes))[codes]


def log_decision(
    job: DeployJob,
    settings: Settings,
    config: PipelineConfig,
    decision: LiveDecision,
    path: Path,
    pairs: pa.Table | None,
) -> None:
    """The decision as a run of the pipeline's deployment experiment: versions and verdict as tags, the test's
    figures as metrics, the decision file and the rows it was taken on."""
    import mlflow
    import pyarrow.parquet as pq

    with stage_run(settings, config, job.context, deployment_experiment(config), f"{decision.gate}_compare"):
        mlflow.set_tags(
            {
                "flightplan.candidate_version": decision.candidate,
                "flightplan.champion_version": decision.champion or "-",
                "flightplan.decision": DECISIONS[decision.gate][decision.accepted],
                "flightplan.gate": decision.gate,
            }
        )
        figures = {k: v for k, v in (decision.test or {}).items() if isinstance(v, int | float)}
        mlflow.log_metrics({f"live_{k}": float(v) for k, v in figures.items() if math.isfinite(v)})
        mlflow.log_artifact(str(path))
        if pairs is not None:
            rows = path.with_name(f"{path.stem}-rows.parquet")
            pq.write_table(pairs, rows)
            mlflow.log_artifact(str(rows))
