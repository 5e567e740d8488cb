"""
### data_engineering

Turns the nightly landing files of a pipeline into validated, labeled, reproducible splits:

**ingest** (Spark: typed Parquet per day, bad rows to quarantine with file, line and reason) →
**profile** (statistics page) → **validate** (Great Expectations; a failure stops the run) →
**wrangle** (tidy, deduplicate, impute) → **label** → **split** (train / validation / test + manifest).

Runs nightly on the day that just ended. To backfill, trigger it with a `start` and an `end` date
(end excluded). Re-running an interval replaces its partitions: no duplicates.
The split task updates the `flightplan_splits` asset, with the manifest path in the event's extra,
which schedules model engineering.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task
from shared import NIGHTLY, SPLITS, dag_options, interval_params, pipeline_param, stage_input


@dag(
    dag_id="data_engineering",
    schedule=NIGHTLY,
    doc_md=__doc__,
    **dag_options("data-engineering", retries=2),
    params={
        "pipeline": pipeline_param(),
        **interval_params("(re)ingest"),
    },
)
def data_engineering() -> None:
    @task
    def ingest() -> str:
        from flightplan import workflow

        return str(workflow.ingest(stage_input()))

    @task
    def profile(_ingested: str) -> str:
        from flightplan import workflow

        return str(workflow.profile(stage_input()))

    @task(retries=0)
    def validate(_ingested: str) -> str:
        from flightplan import workflow

        return str(workflow.validate(stage_input()))

    @task
    def wrangle(_validated: str) -> str:
        from flightplan import workflow

        return str(workflow.wrangle(stage_input()))

    @task
    def label(_wrangled: str) -> str:
        from flightplan import workflow

        return str(workflow.label(stage_input()))

    @task(outlets=[SPLITS])
    def split(_labeled: str) -> str:
        from flightplan import workflow

        job = stage_input()
        manifest = workflow.split(job)
        get_current_context()["outlet_events"][SPLITS].extra = {"pipeline": job.pipeline, "manifest": str(manifest)}
        return str(manifest)

    ingested = ingest()
    validated = validate(ingested)
    profile(ingested) >> validated
    split(label(wrangle(validated)))


data_engineering()
