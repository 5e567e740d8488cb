"""
### monitoring

Nightly, the predictions the service answered in the day that just ended are checked against the
training data of the model that answered them:

**check** (per-feature drift and prediction drift with Evidently's default tests on every row; live
performance on the ground truth sent back; Evidently reports; one MLflow run per window in
`<pipeline>-monitoring`; the retrain decision and its reason) → **retrain_needed** → **retrain** (triggers
`model_engineering` with the reason and the training window; the new challenger then goes through the
acceptance gate and the deployment DAG as any other).

A decision needs `monitoring.min_rows` answered rows; performance needs `monitoring.min_labeled_rows` rows
with ground truth; a retraining is asked for at most once per `monitoring.cooldown_hours`. Trigger it by
hand to check another window (`start`/`end`, or the last `window_hours`) or with other thresholds.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task
from shared import NIGHTLY, dag_options, pipeline_param, run_context


def monitor_job() -> Any:
    """The window (Params first, then a scheduled run's data interval, else the last hours up to now) and
    the run's thresholds as config overrides."""
    from datetime import UTC, datetime

    from flightplan.monitoring.stages import MonitorJob

    context = get_current_context()
    params = context["params"]
    overrides = {
        f"monitoring.{name}": params[name]
        for name in ("window_hours", "drift_share", "max_metric_drop", "min_rows")
        if params.get(name) is not None
    }
    run = run_context(context)
    if params.get("start") and params.get("end"):
        start, end = (datetime.fromisoformat(params[side]).astimezone(UTC) for side in ("start", "end"))
    elif context["dag_run"].run_type == "scheduled":
        start, end = context["data_interval_start"], context["data_interval_end"]
    else:
        return MonitorJob.last_hours(params["pipeline"], datetime.now(UTC), run, overrides)
    return MonitorJob(params["pipeline"], start, end, run, overrides)


@dag(
    dag_id="monitoring",
    schedule=NIGHTLY,
    doc_md=__doc__,
    render_template_as_native_obj=True,  # the retrain conf reaches model_engineering as a dict
    **dag_options("monitoring", retries=1),
    params={
        "pipeline": pipeline_param(),
        "start": Param(
            None, type=["null", "string"], format="date-time", description="Window start (UTC); empty: see below"
        ),
        "end": Param(None, type=["null", "string"], format="date-time", description="Window end (UTC, exclusive)"),
        "window_hours": Param(
            None, type=["null", "integer"], minimum=1, description="Manual runs: the last N hours; empty: config's"
        ),
        "drift_share": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            maximum=1,
            description="Retrain when this share of the features and the model's output drift; empty: config's",
        ),
        "max_metric_drop": Param(
            None, type=["null", "number"], minimum=0, description="Allowed fall of the primary metric; empty: config's"
        ),
        "min_rows": Param(None, type=["null", "integer"], minimum=1, description="Rows needed to decide"),
    },
)
def monitoring() -> None:
    @task
    def check() -> dict[str, Any]:
        from flightplan.monitoring import stages

        return stages.outcome(stages.check(monitor_job()))

    @task.short_circuit
    def retrain_needed(outcome: dict[str, Any]) -> bool:
        return bool(outcome["decision"]["retrain"])

    retrain = TriggerDagRunOperator(
        task_id="retrain",
        trigger_dag_id="model_engineering",
        conf="{{ ti.xcom_pull(task_ids='check')['retrain_conf'] }}",
    )
    retrain_needed(check()) >> retrain


monitoring()
