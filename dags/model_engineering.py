"""
### model_engineering

From the newest splits of a pipeline to a registered, tested, packaged model:

**features** (from config; selection on gain) → **tune** (Optuna, each trial a nested MLflow run) →
**train** (XGBoost, per-round metrics live in MLflow) → **evaluate** (metrics, slices, plots, model card) →
**accept** (thresholds + the champion on the same test set; a rejected model fails this task with its
reasons and is not registered) → **package** (ONNX, parity on the whole test set) → **register**
(new version, alias `challenger`).

Scheduled by the `flightplan_splits` asset (data_engineering's split task); trigger it from the UI to
retrain with other settings. All runs of a pipeline are in the MLflow experiment
`<pipeline>-model-engineering`, one run per DAG run.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from shared import CHALLENGER, SPLITS, dag_options, pipeline_param, run_context, triggering_event


def model_job() -> Any:
    """The pipeline, the run's Params as config overrides, the split that triggered it and who is asking."""
    from flightplan.model.stages import ModelJob

    context = get_current_context()
    params = context["params"]
    overrides = {
        key: params[name]
        for name, key in (
            ("trials", "model.tuning.trials"),
            ("timeout_minutes", "model.tuning.timeout_minutes"),
            ("window_days", "model.window_days"),
            ("engine", "model.engine"),
        )
        if params.get(name) is not None
    }
    event = triggering_event(context)
    pipeline = event.get("pipeline", params["pipeline"]) if event else params["pipeline"]
    manifest = event.get("manifest") if event else None
    reason = params.get("reason") or ("new splits" if event else "manual")
    return ModelJob(pipeline, run_context(context), overrides, manifest, reason)


@dag(
    dag_id="model_engineering",
    schedule=[SPLITS],
    doc_md=__doc__,
    **dag_options("model-engineering", retries=1),
    params={
        "pipeline": pipeline_param(),
        "trials": Param(None, type=["null", "integer"], minimum=1, description="Optuna trials; empty: the config's"),
        "timeout_minutes": Param(
            None, type=["null", "number"], exclusiveMinimum=0, description="Tuning time budget; empty: the config's"
        ),
        "window_days": Param(
            None, type=["null", "integer"], minimum=1, description="Train on the last N days only; empty: all"
        ),
        "engine": Param(
            None,
            type=["null", "string"],
            enum=[None, "local", "spark"],
            description="Training engine: xgboost in the task (local) or xgboost.spark; empty: the config's",
        ),
        "reason": Param(
            None, type=["null", "string"], description="Why this run (kept in MLflow and the registry); optional"
        ),
    },
)
def model_engineering() -> None:
    @task
    def features() -> str:
        from flightplan.model import stages

        return stages.features(model_job())

    @task
    def tune(mlflow_run: str) -> str:
        from flightplan.model import stages

        stages.tune(model_job(), mlflow_run)
        return mlflow_run

    @task
    def train(mlflow_run: str) -> str:
        from flightplan.model import stages

        stages.train(model_job(), mlflow_run)
        return mlflow_run

    @task
    def evaluate(mlflow_run: str) -> str:
        from flightplan.model import stages

        stages.evaluate(model_job(), mlflow_run)
        return mlflow_run

    @task(retries=0)
    def accept(mlflow_run: str) -> str:
        from flightplan.model import stages

        stages.accept(model_job(), mlflow_run)
        return mlflow_run

    @task(retries=0)
    def package(mlflow_run: str) -> dict[str, str]:
        from flightplan.model import stages

        return {"run_id": mlflow_run, "model_uri": stages.package_onnx(model_job(), mlflow_run)}

    @task(outlets=[CHALLENGER])
    def register(packaged: dict[str, str]) -> dict[str, str]:
        from flightplan.model import stages

        job = model_job()
        registered = stages.register(job, packaged["run_id"], packaged["model_uri"])
        get_current_context()["outlet_events"][CHALLENGER].extra = {"pipeline": job.pipeline, **registered}
        return registered

    register(package(accept(evaluate(train(tune(features()))))))


model_engineering()
