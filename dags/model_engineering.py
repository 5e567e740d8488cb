"""
### model_engineering

From the newest splits of a pipeline to a registered, tested, packaged model:

**features** (from config; selection on gain) → **tune** (Optuna, each trial a nested MLflow run) →
**train** (XGBoost, per-round metrics live in MLflow; tune and train reuse the outputs of an earlier run whose
split, effective config and code were the same, and say so in the log and the run's `flightplan.cache_reused`
tag; the `fresh` Param does the work anyway) → **evaluate** (metrics, slices, plots, model card) →
**accept** (thresholds + the champion on the same test set; a rejected model fails this task with its
reasons and is not registered) → **package** (ONNX, parity on the whole test set) → **register**
(new version, alias `challenger`).

One DAG per pipeline (`<pipeline>.model_engineering`), scheduled by that pipeline's `<pipeline>.splits` asset
(its data_engineering's split task), so no other pipeline's event ever starts it; trigger it from the UI to
retrain with other settings. All runs of a pipeline are in the MLflow experiment
`<pipeline>-model-engineering`, one run per DAG run.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from flightplan import orchestration
from flightplan.config import PipelineConfig
from shared import PIPELINES, asset, dag_options, job


def build(config: PipelineConfig) -> None:
    pipeline = config.name
    challenger = asset(pipeline, "challenger")

    @dag(
        schedule=[asset(pipeline, "splits")],
        doc_md=__doc__,
        **dag_options(config, "model_engineering", retries=1),
        params={
            "trials": Param(
                None, type=["null", "integer"], minimum=1, description="Optuna trials; empty: the config's"
            ),
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
            "fresh": Param(
                False,
                type="boolean",
                description="Tune and train even when an earlier run had the same data, config and code",
            ),
        },
    )
    def model_engineering() -> None:
        @task
        def features() -> str:
            from flightplan.model import stages

            return stages.features(job(pipeline, orchestration.model_job))

        @task
        def tune(mlflow_run: str) -> str:
            from flightplan.model import stages

            stages.tune(job(pipeline, orchestration.model_job), mlflow_run)
            return mlflow_run

        @task
        def train(mlflow_run: str) -> str:
            from flightplan.model import stages

            stages.train(job(pipeline, orchestration.model_job), mlflow_run)
            return mlflow_run

        @task
        def evaluate(mlflow_run: str) -> str:
            from flightplan.model import stages

            stages.evaluate(job(pipeline, orchestration.model_job), mlflow_run)
            return mlflow_run

        @task(retries=0)
        def accept(mlflow_run: str) -> str:
            from flightplan.model import stages

            stages.accept(job(pipeline, orchestration.model_job), mlflow_run)
            return mlflow_run

        @task(retries=0)
        def package(mlflow_run: str) -> dict[str, str]:
            from flightplan.model import stages

            return {
                "run_id": mlflow_run,
                "model_uri": stages.package_onnx(job(pipeline, orchestration.model_job), mlflow_run),
            }

        @task(outlets=[challenger])
        def register(packaged: dict[str, str]) -> dict[str, str]:
            from flightplan.model import stages

            registered = stages.register(
                job(pipeline, orchestration.model_job), packaged["run_id"], packaged["model_uri"]
            )
            get_current_context()["outlet_events"][challenger].extra = {"pipeline": pipeline, **registered}
            return registered

        # Each task takes the one before's XComArg, which Airflow turns into its value at run time.
        register(package(accept(evaluate(train(tune(features()))))))  # type: ignore[arg-type]

    model_engineering()


for pipeline_config in PIPELINES.configs.values():
    build(pipeline_config)
