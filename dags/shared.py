"""What the DAG files share: the pipelines they build DAGs for, each pipeline's assets, the options every DAG
sets, how a task reads its run, and the sensor that waits for a day's landing files.
Listed in .airflowignore: it holds no DAG."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import pendulum
from airflow.sdk import Asset, BaseOperator, CronDataIntervalTimetable, Param, get_current_context
from airflow.sdk.exceptions import AirflowFailException
from flightplan import orchestration
from flightplan.config import PipelineConfig, scan_pipelines
from flightplan.orchestration import JobError, RunFacts, asset_name, asset_uri, dag_id
from flightplan.settings import load_settings

if TYPE_CHECKING:
    from flightplan.monitoring.policy import Waiting

Job = TypeVar("Job")
SETTINGS = load_settings()
# Read at every parse: a YAML added, edited or removed changes the DAGs within one parse interval. A YAML that
# does not load has no DAGs; pipeline_configs.py reports it as that file's import error.
PIPELINES = scan_pipelines(SETTINGS.pipelines_dir)


def asset(pipeline: str, kind: str) -> Asset:
    return Asset(name=asset_name(pipeline, kind), uri=asset_uri(pipeline, kind))


def timetable(config: PipelineConfig, stage: str) -> CronDataIntervalTimetable | None:
    """A cron with data intervals: each run covers the time since the previous tick (a nightly run the day that
    just ended), where Airflow 3 reads a bare cron string as a point in time with no interval."""
    cron = config.schedule.cron(stage)
    return CronDataIntervalTimetable(cron, timezone=config.schedule.timezone) if cron else None


def dag_options(config: PipelineConfig, stage: str, retries: int) -> dict[str, Any]:
    """What every flightplan DAG sets alike: its id, one pipeline's runs at a time (others have their own DAGs),
    no catch-up, tags, owner and retries."""
    return {
        "dag_id": dag_id(config.name, stage),
        "start_date": pendulum.datetime(2013, 1, 1, tz="UTC"),
        "catchup": False,
        "max_active_runs": config.schedule.max_active_runs,
        "tags": ["flightplan", stage.replace("_", "-"), f"pipeline:{config.name}"],
        "description": f"{stage.replace('_', ' ')} of the {config.name} pipeline",
        "default_args": {
            "owner": "flightplan",
            "retries": retries,
            "retry_delay": timedelta(seconds=SETTINGS.task_retry_delay_seconds),
        },
    }


def run_facts(pipeline: str) -> RunFacts:
    """This task's run as plain values, for the library's rule (flightplan.orchestration) to make a job of."""
    context = get_current_context()
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    events = sorted(
        (event for events in (context.get("triggering_asset_events") or {}).values() for event in events),
        key=lambda event: event.timestamp,
    )
    return RunFacts(
        pipeline=pipeline,
        dag_id=context["dag"].dag_id,
        run_id=context["run_id"],
        task_id=context["task"].task_id,
        # The task SDK's run type is an enum whose str() is its name ("DagRunType.SCHEDULED"), not its value.
        run_type=str(getattr(context["dag_run"].run_type, "value", context["dag_run"].run_type)),
        params=dict(context["params"]),
        data_interval=(start, end) if start and end else None,
        events=[dict(event.extra) for event in events],
    )


def job(pipeline: str, rule: Callable[[RunFacts], Job]) -> Job:
    """The job the library's rule (flightplan.orchestration) makes of this task's run; a run that cannot become
    one fails the task at once, since retrying the same run cannot mend it."""
    try:
        return rule(run_facts(pipeline))
    except JobError as err:
        raise fail_for_good(err) from err


def stage_input(pipeline: str) -> Any:
    """The pipeline, the days (the rule of flightplan.orchestration.data_interval) and the run's identity."""
    from flightplan.layout import open_pipeline

    _, config, layout = open_pipeline(pipeline)
    return job(pipeline, lambda facts: orchestration.stage_input(facts, config, layout.landing))


def later_runs_queued() -> int:
    """The later runs of this task's DAG that are queued, as Airflow's metadata has them (through the task's API:
    tasks do not reach the database)."""
    context = get_current_context()
    return int(context["ti"].get_dr_count(dag_id=context["dag"].dag_id, states=["queued"]))


def waiting(pipeline: str) -> Waiting:
    """The later runs of this task's DAG that are queued, and the pipeline's retrainings queued or running."""
    from flightplan.monitoring.policy import Waiting

    retrainings = get_current_context()["ti"].get_dr_count(
        dag_id=dag_id(pipeline, "model_engineering"), states=["queued", "running"]
    )
    return Waiting(later_checks=later_runs_queued(), retrainings=int(retrainings))


def fail_for_good(error: Exception) -> AirflowFailException:
    """A failure that retrying the same run cannot mend: the task fails at once, naming why."""
    return AirflowFailException(f"{type(error).__name__}: {error}")


def interval_params(verb: str) -> dict[str, Param]:
    return {
        "start": Param(
            None,
            type=["null", "string"],
            format="date",
            description=f"First day to {verb}; empty: the run's data interval (none: a snapshot's day, or the "
            "newest landed day)",
        ),
        "end": Param(None, type=["null", "string"], format="date", description=f"Day after the last day to {verb}"),
    }


class LandingSensor(BaseOperator):
    """Waits for the landing folders of a scheduled run's days, deferred between looks (no worker slot is held),
    for the pipeline's ``schedule.landing_timeout_minutes``; then fails once, naming each folder still missing.
    Other runs (manual, backfill) and snapshot pipelines pass at once: what they find is what they ingest."""

    ui_color = "#e8f4fd"

    def __init__(self, *, pipeline: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline

    def execute(self, context: Any) -> str:
        return self.look(context, deadline=None)

    def look(self, context: Any, event: Any = None, deadline: str | None = None) -> str:
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
        from flightplan.layout import open_pipeline

        _, config, layout = open_pipeline(self.pipeline)
        facts = run_facts(self.pipeline)
        start, end = job(self.pipeline, lambda run: orchestration.data_interval(run, config, layout.landing))
        if config.source.snapshot is not None or facts.run_type != "scheduled":
            return f"{facts.run_type} run: no wait"
        from flightplan.data.partitions import days_in

        days = days_in(start, end)
        missing = [str(layout.landing / d.isoformat()) for d in days if not orchestration.day_landed(layout.landing, d)]
        if not missing:
            return f"landed: {start}..{end}"
        now = datetime.now(UTC)
        until = (
            datetime.fromisoformat(deadline)
            if deadline
            else now + timedelta(minutes=config.schedule.landing_timeout_minutes)
        )
        if now >= until:
            raise AirflowFailException(
                f"no landing files after {config.schedule.landing_timeout_minutes:g} minutes in "
                + ", ".join(missing)
                + " (the drop did not arrive: land it and clear this task, or raise schedule.landing_timeout_minutes)"
            )
        self.log.info("waiting for %s until %s", ", ".join(missing), until.isoformat())
        pause = min(config.schedule.landing_poke_seconds, max((until - now).total_seconds(), 0.1))
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(seconds=pause)),
            method_name="look",
            kwargs={"deadline": until.isoformat()},
        )
        raise AssertionError("defer() raises")  # pragma: no cover
