"""
### monitoring

The predictions the service answered in the run's data interval (a nightly run: the day that just ended) are
checked against the training data of the model that answered them:

**check** (per-feature drift and prediction drift with Evidently's default tests on every row; live
performance on the ground truth sent back; Evidently reports; one MLflow run per window in
`<pipeline>-monitoring`; the retrain decision and its reason) → **retrain_needed** → **retrain** (triggers
the pipeline's `<pipeline>.model_engineering` with the reason and the training window; the new challenger
then goes through the acceptance gate and the deployment DAG as any other).

A decision needs `monitoring.min_rows` answered rows; performance needs `monitoring.min_labeled_rows` rows
with ground truth. No retraining is asked for while one is queued or running, nor within
`monitoring.cooldown_hours` of the last one that gave a new model (a failed one lets the next check ask again),
nor by a run with later runs of this DAG queued (a backfill asks once, from its last day). One DAG per
pipeline (`<pipeline>.monitoring`), on its `schedule.monitoring` cron (the data cron unless set). Trigger it by
hand to check another window (`start`/`end`; without them and without a logical date, the last
`window_hours`) or with other thresholds.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task
from flightplan import orchestration
from flightplan.config import PipelineConfig
from flightplan.orchestration import dag_id
from shared import PIPELINES, dag_options, job, timetable, waiting


def build(config: PipelineConfig) -> None:
    pipeline = config.name

    @dag(
        schedule=timetable(config, "monitoring"),
        doc_md=__doc__,
        render_template_as_native_obj=True,  # the retrain conf reaches model_engineering as a dict
        **dag_options(config, "monitoring", retries=1),
        params={
            "start": Param(
                None, type=["null", "string"], format="date-time", description="Window start (UTC); empty: see below"
            ),
            "end": Param(None, type=["null", "string"], format="date-time", description="Window end (UTC, exclusive)"),
            "window_hours": Param(
                None,
                type=["null", "integer"],
                minimum=1,
                description="Runs without a data interval: the last N hours; empty: config's",
            ),
            "drift_share": Param(
                None,
                type=["null", "number"],
                exclusiveMinimum=0,
                maximum=1,
                description="Retrain when this share of the features and the model's output drift; empty: config's",
            ),
            "max_metric_drop": Param(
                None,
                type=["null", "number"],
                minimum=0,
                description="Allowed fall of the primary metric; empty: config's",
            ),
            "min_rows": Param(None, type=["null", "integer"], minimum=1, description="Rows needed to decide"),
        },
    )
    def monitoring() -> None:
        @task
        def check() -> dict[str, Any]:
            from datetime import UTC, datetime

            from flightplan.layout import open_pipeline
            from flightplan.monitoring import stages

            config = open_pipeline(pipeline)[1]
            now, queued = datetime.now(UTC), waiting(pipeline)
            window = job(pipeline, lambda facts: orchestration.monitor_job(facts, config, now, queued))
            return stages.outcome(*stages.check(window))

        @task.short_circuit
        def retrain_needed(outcome: dict[str, Any]) -> bool:
            return bool(outcome["decision"]["retrain"])

        retrain = TriggerDagRunOperator(
            task_id="retrain",
            trigger_dag_id=dag_id(pipeline, "model_engineering"),
            conf="{{ ti.xcom_pull(task_ids='check')['retrain_conf'] }}",  # type: ignore[arg-type]  # rendered
        )
        retrain_needed(check()) >> retrain  # type: ignore[arg-type]  # the XComArg is the value at run time

    monitoring()


for pipeline_config in PIPELINES.configs.values():
    build(pipeline_config)
