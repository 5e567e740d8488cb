"""
### data_engineering

Turns a pipeline's landing files into validated, labeled, reproducible splits:

**wait_for_landing** (a scheduled run waits, deferred, for its day's folder) →
**ingest** (Spark: typed Parquet per day, bad rows to quarantine with file, line and reason) →
**profile** (statistics page), beside **validate** (Great Expectations; a failure stops the run) →
**wrangle** (tidy, deduplicate, impute) → **label** → **split** (train / validation / test + manifest, over the
whole history up to the newest labeled day, whatever interval the run re-ran).

One DAG per pipeline (`<pipeline>.data_engineering`). Scheduled runs follow the pipeline's `schedule.data` cron
and cover the interval that just ended; to (re)ingest a range, trigger it with a `start` and an `end` date (end
excluded) or backfill it. A snapshot needs no dates; a daily-drop run with neither dates nor a data interval
works on the newest landed day. Re-running an interval replaces its partitions: no duplicates; a day whose
landing files are gone keeps its rows, and the ingest manifest says so.
The split task updates the pipeline's `<pipeline>.splits` asset, with the manifest path in the event's extra,
which schedules that pipeline's model engineering. A run with later runs of this DAG queued (a backfill's days
still to come) skips its split: the last one splits and starts one retraining. A split whose labeled data,
window, config and code are those of the newest split skips too, saying so ("cache hit"): nothing changed, so
nothing is retrained; the `fresh` Param splits anyway.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from flightplan.config import PipelineConfig
from shared import (
    PIPELINES,
    LandingSensor,
    asset,
    dag_options,
    fail_for_good,
    interval_params,
    later_runs_queued,
    stage_input,
    timetable,
)


def split_unless_skipped(pipeline: str) -> str:
    """The new split's manifest; the task is skipped (a skipped task updates no asset: no retraining) when later
    runs of this DAG will split, or when the newest split was made of the same inputs."""
    from airflow.sdk.exceptions import AirflowSkipException
    from flightplan import orchestration
    from flightplan.data import stages

    left = orchestration.split_left_to_later_runs(later_runs_queued())
    if left:
        raise AirflowSkipException(left)
    made = stages.split(stage_input(pipeline))
    if made.unchanged:
        raise AirflowSkipException(made.unchanged)
    return str(made.manifest)


def build(config: PipelineConfig) -> None:
    pipeline = config.name
    splits = asset(pipeline, "splits")

    @dag(
        schedule=timetable(config, "data"),
        doc_md=__doc__,
        **dag_options(config, "data_engineering", retries=2),
        params={
            **interval_params("(re)ingest"),
            "fresh": Param(
                False,
                type="boolean",
                description="Split even when the newest split was made of the same labeled data, config and code",
            ),
        },
    )
    def data_engineering() -> None:
        @task
        def ingest() -> str:
            from flightplan.data import stages
            from flightplan.data.ingest import NoLandingData

            try:
                return str(stages.ingest(stage_input(pipeline)))
            except NoLandingData as err:
                raise fail_for_good(err) from err

        @task
        def profile(_ingested: str) -> str:
            from flightplan.data import stages

            return str(stages.profile(stage_input(pipeline)))

        @task(retries=0)
        def validate(_ingested: str) -> str:
            from flightplan.data import stages

            return str(stages.validate(stage_input(pipeline)))

        @task
        def wrangle(_validated: str) -> str:
            from flightplan.data import stages

            return str(stages.wrangle(stage_input(pipeline)))

        @task
        def label(_wrangled: str) -> str:
            from flightplan.data import stages

            return str(stages.label(stage_input(pipeline)))

        @task(outlets=[splits])
        def split(_labeled: str) -> str:
            manifest = split_unless_skipped(pipeline)
            get_current_context()["outlet_events"][splits].extra = {"pipeline": pipeline, "manifest": manifest}
            return manifest

        landed = LandingSensor(task_id="wait_for_landing", pipeline=pipeline, retries=0)
        ingested = ingest()
        landed >> ingested
        # Each task takes the one before's XComArg, which Airflow turns into its value at run time. The profile
        # runs beside validation and what follows it: nothing reads it, and a failed validation still gets it.
        profile(ingested)  # type: ignore[arg-type]
        split(label(wrangle(validate(ingested))))  # type: ignore[arg-type]

    data_engineering()


for pipeline_config in PIPELINES.configs.values():
    build(pipeline_config)
