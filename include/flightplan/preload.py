"""The libraries that the stages' tasks import, loaded once in the process that forks the task processes.

Airflow runs a task in a process forked from the executor's worker: a LocalExecutor's worker is forked from the
scheduler, a Celery worker's pool process from the worker's main process. What that process has imported before
it forks, every task has for free. Imported by each task instead, these cost 0.5 to 3 s apiece (MLflow's SQL store,
Great Expectations, xgboost, scikit-learn), on every task of every run, which on a small table is most of a
stage's time.

flightplan's own modules are left out: each task imports them from disk, so a task always runs the library as it
is now, and an edited library needs no restart of the scheduler. They cost a few tens of milliseconds; the
libraries they import are here. Evidently is left out too: the monitoring task draws its reports in a child
interpreter of its own.

None of these may start a Python thread when imported: a thread does not survive a fork, and a lock it held stays
held in the child. The native threads some start (OpenBLAS's pool, jemalloc's purger) stop and restart around a
fork by their own `pthread_atfork` handlers; onnxruntime starts one that has none, so it stays out.
`tests/unit/test_preload.py` holds both: no Python thread, and a forked child that uses them."""

from __future__ import annotations

import importlib
import logging

TASK_MODULES = (
    # Every stage: its MLflow run, in the embedded stack's SQLite store; the typed config; the data frames.
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "pydantic",
    "yaml",
    "pandas",
    "pyarrow.compute",
    "pyarrow.csv",
    "pyarrow.dataset",
    "pyarrow.parquet",
    # Data engineering: Spark Connect's client, Great Expectations.
    "pyspark.sql.connect.session",
    "great_expectations",
    "great_expectations.checkpoint",
    "great_expectations.expectations",
    # Model engineering, deployment and batch scoring.
    "xgboost",
    "optuna",
    "sklearn.metrics",
)


def preload_task_modules() -> dict[str, str]:
    """Imports each of ``TASK_MODULES``. Logs and returns the ones that failed, each with its error: a task that
    needs one fails on its own import with the same error, which is where a user looks for it."""
    failed: dict[str, str] = {}
    for name in TASK_MODULES:
        try:
            importlib.import_module(name)
        except Exception as err:  # an import may fail with any error; the scheduler must start regardless
            failed[name] = f"{type(err).__name__}: {err}"
            logging.getLogger(__name__).warning("not preloaded for tasks: %s (%s)", name, failed[name])
    return failed
