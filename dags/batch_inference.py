"""
### batch_inference

The pipeline's `champion` scores the wrangled rows of the run's days on Spark; the predictions (with the key,
the time, the model version) replace those days' partitions of the `predictions` dataset, so re-running an
interval never duplicates. One DAG per pipeline (`<pipeline>.batch_inference`), on the pipeline's
`schedule.batch_inference` cron (the data cron unless set); trigger it with `start` and `end` to score a range
of days.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from flightplan.config import PipelineConfig
from shared import PIPELINES, dag_options, interval_params, stage_input, timetable


def build(config: PipelineConfig) -> None:
    pipeline = config.name

    @dag(
        schedule=timetable(config, "batch_inference"),
        doc_md=__doc__,
        **dag_options(config, "batch_inference", retries=2),
        params=interval_params("score"),
    )
    def batch_inference() -> None:
        @task
        def score() -> str:
            from flightplan.deployment import batch

            return str(batch.score(stage_input(pipeline)))

        score()

    batch_inference()


for pipeline_config in PIPELINES.configs.values():
    build(pipeline_config)
