"""The modules that the stages' tasks import, loaded once in the process that forks the task processes.

An Airflow task runs in a process forked from an executor's worker, which is itself forked from the scheduler:
what the scheduler has imported before its workers start, every task has for free. Imported by each task
instead, these cost 0.5 to 3.5 s apiece (mlflow's SQL store, Great Expectations, Evidently, xgboost, scikit-learn),
on every task of every run, which on a small table is most of a stage's time.

None of them may start a Python thread when imported: a thread does not survive a fork, and a lock it held stays
held in the child. The native threads some start (OpenBLAS's pool, jemalloc's purger) stop and restart around a
fork by their own `pthread_atfork` handlers; onnxruntime starts one that has none, so it stays out.
`tests/unit/test_preload.py` holds both: no Python thread, and a forked child that uses them all."""

from __future__ import annotations

import importlib

TASK_MODULES = (
    # Every stage: its MLflow run, in the embedded stack's SQLite store.
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    # Data engineering: Spark Connect's client, Great Expectations, the stages themselves.
    "pyspark.sql.connect.session",
    "great_expectations",
    "great_expectations.checkpoint",
    "great_expectations.expectations",
    "flightplan.data.stages",
    "flightplan.data.ingest",
    "flightplan.data.profile",
    "flightplan.data.rewrite",
    "flightplan.data.validate",
    "flightplan.data.wrangle",
    "flightplan.data.label",
    "flightplan.data.split",
    # Model engineering, deployment, monitoring and batch scoring.
    "flightplan.model.stages",
    "flightplan.model.train",
    "flightplan.model.tune",
    "flightplan.model.evaluate",
    "flightplan.model.package",
    "flightplan.model.registry",
    "flightplan.deployment.stages",
    "flightplan.monitoring.stages",
    "flightplan.monitoring.report",
    "evidently",
    "evidently.presets",
)


def preload_task_modules() -> dict[str, str]:
    """Imports each of ``TASK_MODULES``. Returns the ones that failed, each with its error: a task that needs one
    fails on its own import with the same error, which is where a user looks for it."""
    failed: dict[str, str] = {}
    for name in TASK_MODULES:
        try:
            importlib.import_module(name)
        except Exception as err:  # an import may fail with any error; the scheduler must start regardless
            failed[name] = f"{type(err).__name__}: {err}"
    return failed
