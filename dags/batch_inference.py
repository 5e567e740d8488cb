"""
### batch_inference

Nightly, the pipeline's `champion` scores the wrangled rows of the day that just ended on Spark; the
predictions (with the key, the time, the model version) replace that day's partition of the
`predictions` dataset, so re-running an interval never duplicates. Trigger it with `start` and `end` to
score a range of days.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from shared import NIGHTLY, dag_options, interval_params, pipeline_param, stage_input


@dag(
    dag_id="batch_inference",
    schedule=NIGHTLY,
    doc_md=__doc__,
    **dag_options("batch-inference", retries=2),
    params={"pipeline": pipeline_param(), **interval_params("score")},
)
def batch_inference() -> None:
    @task
    def score() -> str:
        from flightplan.serving import batch

        return str(batch.score(stage_input()))

    score()


batch_inference()
