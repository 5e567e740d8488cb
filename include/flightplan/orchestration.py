"""How pipelines map onto Airflow, and the rule that turns one DAG run into the job of one pipeline.

Every pipeline YAML gets DAGs of its own, ``<pipeline>.<stage>`` (``flights.data_engineering``), chained by
assets of its own (``flights.splits``, ``flights.challenger``, ``flights.champion``): two pipelines never share
a run, an event queue, a schedule, a pause switch or a ``max_active_runs``. The DAG files build them from
:func:`flightplan.config.scan_pipelines`; the tasks describe their run with :class:`RunFacts` (plain values read
from Airflow's context) and get their job from the functions below, so the rule is written once and tested
without Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flightplan.config import PipelineConfig

if TYPE_CHECKING:
    from flightplan.data.stages import StageInput
    from flightplan.deployment.stages import DeployJob
    from flightplan.model.stages import ModelJob
    from flightplan.monitoring.policy import Waiting
    from flightplan.monitoring.stages import MonitorJob
    from flightplan.tracking import RunContext

STAGES = ("data_engineering", "model_engineering", "deployment", "monitoring", "batch_inference", "rollback")
# What a pipeline's DAGs hand each other: data_engineering -> splits -> model_engineering -> challenger ->
# deployment -> champion (and rollback -> champion).
ASSETS = ("splits", "challenger", "champion")
# model_engineering's Params that override a config key, by Param name.
MODEL_PARAMS = {
    "trials": "model.tuning.trials",
    "timeout_minutes": "model.tuning.timeout_minutes",
    "window_days": "model.window_days",
    "engine": "model.engine",
}
MONITORING_PARAMS = ("window_hours", "drift_share", "max_metric_drop", "min_rows")


def dag_id(pipeline: str, stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}' (known: {', '.join(STAGES)})")
    return f"{pipeline}.{stage}"


def asset_name(pipeline: str, kind: str) -> str:
    if kind not in ASSETS:
        raise ValueError(f"unknown asset '{kind}' (known: {', '.join(ASSETS)})")
    return f"{pipeline}.{kind}"


def asset_uri(pipeline: str, kind: str) -> str:
    asset_name(pipeline, kind)  # refuses an unknown kind
    return f"file:///flightplan/{pipeline}/{kind}"


class JobError(ValueError):
    """A run that cannot become a job (no interval to work on, an event of another pipeline): retrying the
    same run cannot help, so the DAG fails the task at once."""


@dataclass(frozen=True)
class RunFacts:
    """What Airflow knows of one run of one pipeline's DAG, in plain values."""

    pipeline: str
    dag_id: str
    run_id: str
    task_id: str
    run_type: str  # manual, scheduled, backfill or asset_triggered
    params: Mapping[str, Any] = field(default_factory=dict)
    data_interval: tuple[datetime, datetime] | None = None  # None for a manual run without a logical date
    events: Sequence[Mapping[str, Any]] = ()  # extras of the asset events that started it, oldest first

    @property
    def context(self) -> RunContext:
        from flightplan.tracking import RunContext

        return RunContext(dag_id=self.dag_id, run_id=self.run_id, task_id=self.task_id)

    def event(self) -> Mapping[str, Any] | None:
        """The newest asset event that started this run; an event that names another pipeline is refused
        rather than worked on (each pipeline's assets are its own, so one would mean a misrouted event)."""
        foreign = sorted({str(e.get("pipeline")) for e in self.events if e.get("pipeline") != self.pipeline})
        if foreign:
            raise JobError(f"run {self.run_id} of {self.dag_id} was started by events of pipeline(s) {foreign}")
        return self.events[-1] if self.events else None


def data_interval(facts: RunFacts, config: PipelineConfig, landing: Path) -> tuple[date, date]:
    """The days [start, end) a data stage or batch scoring works on: the run's ``start``/``end`` Params, else
    its data interval (scheduled, backfilled and dated manual runs), else a snapshot's own day, else the
    newest day that landed (a manual run without a logical date: how Airflow 3's REST API starts one)."""
    start, end = facts.params.get("start"), facts.params.get("end")
    if start or end:
        if not (start and end):
            raise JobError(f"{facts.dag_id}: give both 'start' and 'end', or neither (got start={start}, end={end})")
        first, after = date.fromisoformat(str(start)), date.fromisoformat(str(end))
        if first >= after:
            raise JobError(f"{facts.dag_id}: 'start' ({first}) must come before 'end' ({after}, excluded)")
        return first, after
    if facts.data_interval is not None:
        interval_start, interval_end = facts.data_interval
        first, after = interval_start.astimezone(UTC).date(), interval_end.astimezone(UTC).date()
        return first, max(after, first + timedelta(days=1))
    if config.source.snapshot is not None:
        return config.interval(config.source.snapshot.day, config.source.snapshot.day)
    days = landed_days(landing)
    if not days:
        raise JobError(
            f"{facts.dag_id}: run {facts.run_id} has no dates and no data interval, and nothing has landed in "
            f"{landing} (one YYYY-MM-DD folder per day): trigger it with 'start' and 'end'"
        )
    return days[-1], days[-1] + timedelta(days=1)


def landed_days(landing: Path) -> list[date]:
    """The days that have a landing folder, oldest first."""
    days = []
    for folder in landing.glob("????-??-??"):
        try:
            day = date.fromisoformat(folder.name)
        except ValueError:
            continue
        if folder.is_dir():
            days.append(day)
    return sorted(days)


def day_landed(landing: Path, day: date) -> bool:
    """The day's landing folder holds at least one data file (names starting with '.' or '_' are partial)."""
    from flightplan.data.partitions import visible_files

    folder = landing / day.isoformat()
    return folder.is_dir() and bool(visible_files(folder))


def stage_input(facts: RunFacts, config: PipelineConfig, landing: Path) -> StageInput:
    from flightplan.data.stages import StageInput

    start, end = data_interval(facts, config, landing)
    fresh = bool(facts.params.get("fresh"))
    return StageInput(pipeline=facts.pipeline, start=start, end=end, context=facts.context, fresh=fresh)


def model_job(facts: RunFacts) -> ModelJob:
    """The run's Params as config overrides, the split its splits event names (the newest split when it was
    started otherwise), why it runs, and whether it must tune and train afresh."""
    from flightplan.model.stages import ModelJob

    overrides = {key: facts.params[name] for name, key in MODEL_PARAMS.items() if facts.params.get(name) is not None}
    event = facts.event()
    manifest = event.get("manifest") if event else None
    reason = facts.params.get("reason") or ("new splits" if event else "manual")
    return ModelJob(facts.pipeline, facts.context, overrides, manifest, reason, bool(facts.params.get("fresh")))


def deploy_job(facts: RunFacts) -> DeployJob:
    """The version the challenger event names, else the ``version`` Param (the ``challenger`` when empty)."""
    from flightplan.deployment.stages import DeployJob

    event = facts.event()
    if event:
        return DeployJob(facts.pipeline, facts.context, event.get("version"), "new challenger")
    return DeployJob(facts.pipeline, facts.context, facts.params.get("version") or None, _reason(facts))


def rollback_job(facts: RunFacts) -> DeployJob:
    from flightplan.deployment.stages import DeployJob

    return DeployJob(facts.pipeline, facts.context, reason=_reason(facts, "manual rollback"))


def monitor_job(facts: RunFacts, config: PipelineConfig, now: datetime, waiting: Waiting | None = None) -> MonitorJob:
    """The window: the ``start``/``end`` Params, else the run's data interval (any run that has one), else the
    pipeline's last ``monitoring.window_hours`` before ``now``; the run's thresholds as config overrides; what
    waits in Airflow, for the retrain decision."""
    from flightplan.monitoring import policy
    from flightplan.monitoring.stages import MonitorJob

    overrides = {
        f"monitoring.{name}": facts.params[name] for name in MONITORING_PARAMS if facts.params.get(name) is not None
    }
    start, end = facts.params.get("start"), facts.params.get("end")
    if start or end:
        if not (start and end):
            raise JobError(f"{facts.dag_id}: give both 'start' and 'end', or neither (got start={start}, end={end})")
        window = tuple(_utc(datetime.fromisoformat(str(side))) for side in (start, end))
    elif facts.data_interval is not None:
        window = tuple(_utc(side) for side in facts.data_interval)
    else:
        hours = overrides.get("monitoring.window_hours", config.monitoring.window_hours)
        window = (now - timedelta(hours=hours), now)
    if window[0] >= window[1]:
        raise JobError(f"{facts.dag_id}: the window's start ({window[0]}) must come before its end ({window[1]})")
    return MonitorJob(facts.pipeline, window[0], window[1], facts.context, overrides, waiting or policy.Waiting())


def split_left_to_later_runs(later_runs: int) -> str | None:
    """Why a data_engineering run leaves its split to a later run, or None when it splits: each split covers the
    whole history up to the newest labeled day and starts a retraining, so of a backfill's days only the last
    need split (and no retraining is started on history cut at an older day). ``later_runs``: later runs of its
    DAG queued."""
    if not later_runs:
        return None
    return (
        f"{later_runs} later run(s) of this DAG are queued (a backfill, or runs triggered together): the "
        "last one splits the whole history and starts one retraining"
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _reason(facts: RunFacts, default: str = "manual") -> str:
    return str(facts.params.get("reason") or default)
