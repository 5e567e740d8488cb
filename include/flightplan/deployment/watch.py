"""The watch after a promotion (``deployment.watch_hours`` above 0): the champion just replaced answers again, as
the `challenger` (in shadow, or a canary share), and the new champion is judged against it on the labeled live
rows both answered. Each time ``watch_rows`` more of them have their label, the live gate's paired bootstrap
asks whether the replaced version is better by ``margin`` with ``live_confidence``; if it is, `champion` moves
back to it, the service reloads, and the decision says why in MLflow, on the registry version and on the Models
page. The watch ends when its hours are over, or when someone else moved `champion` meanwhile.

Judging again as labels arrive looks at the data several times, which makes a false alarm likelier than one
look would; waiting for ``watch_rows`` new rows between looks keeps their number small."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import pyarrow as pa

from flightplan.config import PipelineConfig
from flightplan.deployment.live import (
    PairedTest,
    labeled_pairs,
    live_decision_path,
    log_decision,
    paired_test,
    serve_as_challenger,
)
from flightplan.deployment.stages import ChallengerRefused, DeployJob, reload_service, rollback
from flightplan.manifests import LiveDecision
from flightplan.model.registry import CHALLENGER, CHAMPION, PREVIOUS, alias_version
from flightplan.settings import Settings

log = logging.getLogger(__name__)


class ChampionRegressed(RuntimeError):
    """The promoted version did worse on live rows than the one it replaced, which is the champion again."""


def start(job: DeployJob, promoted: str) -> dict[str, Any]:
    """Has the replaced champion (`previous`) answer again as the `challenger`; ``watching`` is False when there
    is nothing to watch: no watch configured, or this run replaced no champion (the version was the champion
    already: `previous` is then an older promotion's)."""
    from flightplan.tracking import client

    settings, config, _ = job.open()
    name = config.registered_model
    previous = alias_version(settings, name, PREVIOUS)
    promoted_here = client(settings).get_model_version(name, promoted).tags.get("flightplan.promoted_by")
    watching = bool(config.deployment.watch_hours) and previous not in (None, promoted)
    watching = watching and promoted_here == job.context.run_id
    if watching:
        serve_as_challenger(job, settings, config, str(previous))
    return {"watching": watching, "champion": promoted, "previous": previous}


def watched(job: DeployJob, promoted: str, since: datetime, judged_rows: int) -> dict[str, Any]:
    """One look of the watch begun at ``since``: judges the new champion on the labeled live rows both answered
    since then, once ``watch_rows`` more came since the last judgement (``judged_rows``: how many there were
    then), rolls it back on a regression (raising ChampionRegressed), and ends the watch when its hours are
    over. ``done`` says whether to look again."""
    settings, config, _ = job.open()
    spec, name = config.deployment, config.registered_model
    previous = alias_version(settings, name, PREVIOUS)
    look = {"champion": promoted, "previous": previous, "poll_seconds": spec.live_poll_seconds}
    if previous is None or alias_version(settings, name, CHAMPION) != promoted:
        if previous is not None:
            _end(job, previous)
        return {**look, "done": True, "note": "the champion moved since the promotion: the watch is over"}
    challenger = alias_version(settings, name, CHALLENGER)
    if challenger != previous:  # a new challenger took the alias: the replaced champion answers no more
        return {**look, "done": True, "note": f"version {challenger} is the challenger now: the watch is over"}
    pairs = labeled_pairs(settings, config, previous, promoted, since)  # the new champion's own live record
    log.info("%s: watch of version %s: %d labeled live rows", config.name, promoted, pairs.num_rows)
    over = datetime.now(UTC) >= since + timedelta(hours=spec.watch_hours)
    fresh = pairs.num_rows - judged_rows
    test = None
    # A look every watch_rows new rows, and a last one at the end on all rows (if enough), whose figures the
    # decision to keep the champion carries.
    if fresh >= spec.watch_rows or (over and pairs.num_rows >= spec.watch_rows):
        judged_rows, test = pairs.num_rows, _judged(settings, config, previous, promoted, pairs)
        if test is not None and test.passed:
            _roll_back(job, previous, promoted, test, pairs)
    if not over:
        return {**look, "done": False, "labeled": pairs.num_rows, "judged_rows": judged_rows}
    note = f"kept after {spec.watch_hours:g} h, on {pairs.num_rows} labeled live rows"
    _end(job, previous)
    reload_service(job)
    _decide(job, LiveDecision(**_versions(config.name, previous, promoted), accepted=False, reasons=[], note=note,
                              test=asdict(test) if test else None), pairs)  # fmt: skip
    return {**look, "done": True, "labeled": pairs.num_rows}


def _judged(
    settings: Settings, config: PipelineConfig, previous: str, promoted: str, pairs: pa.Table
) -> PairedTest | None:
    """The paired test of a look, or None when the rows cannot judge the metric (one class only): the next look
    tries again with more."""
    try:
        return paired_test(settings, config, previous, promoted, pairs)
    except ChallengerRefused as undefined:
        log.warning("%s: watch of version %s: no judgement on these rows: %s", config.name, promoted, undefined)
        return None


def _versions(pipeline: str, previous: str, promoted: str) -> dict[str, Any]:
    return {"gate": "watch", "pipeline": pipeline, "candidate": previous, "champion": promoted,
            "decided_at": datetime.now(UTC)}  # fmt: skip


def _roll_back(job: DeployJob, previous: str, promoted: str, test: PairedTest, pairs: pa.Table) -> NoReturn:
    """`champion` back to the replaced version, the service reloaded, the decision kept; raises ChampionRegressed."""
    why = f"watch after the promotion of version {promoted}: version {previous} did better on live rows"
    figures = (
        f"{test.metric} {test.champion:.4f} against {test.candidate:.4f}, gain {test.gain:+.4f}, p = {test.p_value:.3f}"
    )
    moved = rollback(job, f"{why} ({figures})", promoted)
    _end(job, previous)
    reload_service(job)
    _decide(job, LiveDecision(**_versions(job.pipeline, previous, promoted), accepted=True,
                              reasons=[f"{why}: {figures}"], test=asdict(test)), pairs)  # fmt: skip
    raise ChampionRegressed(f"{job.pipeline}: {why} ({figures}); rolled back: {moved}")


def _decide(job: DeployJob, decision: LiveDecision, pairs: pa.Table) -> None:
    """The watch's decision next to the data and in MLflow."""
    settings, config, layout = job.open()
    path = decision.write(live_decision_path(layout, job.context.run_id, "watch"))
    log_decision(job, settings, config, decision, path, pairs)


def _end(job: DeployJob, previous: str) -> None:
    """The replaced champion stops answering as the challenger (unless another version took the alias since);
    the service drops it at its next reload."""
    from flightplan.tracking import client

    settings, config, _ = job.open()
    if alias_version(settings, config.registered_model, CHALLENGER) == previous:
        client(settings).delete_registered_model_alias(config.registered_model, CHALLENGER)
