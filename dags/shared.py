"""What the DAG files share: the assets that chain them and the pipelines a run can choose from.
Listed in .airflowignore: it holds no DAG."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, CronDataIntervalTimetable, Param
from flightplan.config import available_pipelines
from flightplan.settings import load_settings

SPLITS = Asset(name="flightplan_splits", uri="file:///flightplan/splits")
CHALLENGER = Asset(name="flightplan_challenger", uri="file:///flightplan/challenger")
CHAMPION = Asset(name="flightplan_champion", uri="file:///flightplan/champion")
SETTINGS = load_settings()
PIPELINES = available_pipelines(SETTINGS.pipelines_dir)
# Each nightly run covers the UTC day that just ended, [00:00, 24:00): Airflow 3 reads "@daily" as a point in
# time (CronTriggerTimetable), whose data interval starts where it ends.
NIGHTLY = CronDataIntervalTimetable("0 0 * * *", timezone="UTC")


def dag_options(stage: str, retries: int) -> dict[str, Any]:
    """What every flightplan DAG sets alike: one run at a time, no catch-up, tags, owner and retries."""
    return {
        "start_date": pendulum.datetime(2013, 1, 1, tz="UTC"),
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["flightplan", stage],
        "default_args": {
            "owner": "flightplan",
            "retries": retries,
            "retry_delay": timedelta(seconds=SETTINGS.task_retry_delay_seconds),
        },
    }


def pipeline_param() -> Param:
    """The pipeline a run works on: any YAML of the pipelines folder; scheduled runs take the default one
    (FLIGHTPLAN_DEFAULT_PIPELINE, else the first by name)."""
    chosen = SETTINGS.default_pipeline if SETTINGS.default_pipeline in PIPELINES else None
    default = chosen or (PIPELINES[0] if PIPELINES else "")
    return Param(default, enum=PIPELINES, description="Pipeline config to run")


def run_context(context: Any) -> Any:
    """Who is asking, for MLflow lineage: this DAG run and task."""
    from flightplan.tracking import RunContext

    return RunContext(dag_id=context["dag"].dag_id, run_id=context["run_id"], task_id=context["task"].task_id)


def triggering_event(context: Any) -> dict[str, Any] | None:
    """The extra of the newest asset event that started this run; None for a run started by hand or on time.
    Such a run works on the pipeline its event names: its Params hold only the form's defaults."""
    events = [event for events in (context.get("triggering_asset_events") or {}).values() for event in events]
    return dict(events[-1].extra) if events else None


def interval_params(verb: str) -> dict[str, Param]:
    return {
        "start": Param(
            None,
            type=["null", "string"],
            format="date",
            description=f"First day to {verb}; empty: the run's data interval",
        ),
        "end": Param(None, type=["null", "string"], format="date", description=f"Day after the last day to {verb}"),
    }


def stage_input() -> Any:
    """The pipeline, the interval (Params first, else the run's data interval) and the run's identity."""
    from datetime import date

    from airflow.sdk import get_current_context
    from flightplan.workflow import StageInput

    context = get_current_context()
    params = context["params"]
    if params.get("start") and params.get("end"):
        start, end = date.fromisoformat(params["start"]), date.fromisoformat(params["end"])
    elif context.get("data_interval_start") and context.get("data_interval_end"):
        start, end = context["data_interval_start"].date(), context["data_interval_end"].date()
    else:
        raise ValueError("this run has no data interval: trigger it with both 'start' and 'end' dates")
    return StageInput(pipeline=params["pipeline"], start=start, end=end, context=run_context(context))
