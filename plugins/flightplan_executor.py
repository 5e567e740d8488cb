"""The embedded stack's executor: Airflow's LocalExecutor, whose workers start with the libraries the stages
import already imported (``flightplan.preload``), so that a task process, forked from a worker, does not import
them again.

Not a plugin: listed in this folder's .airflowignore. Airflow puts the plugins folder on ``sys.path``, which is
how ``[core] executor = flightplan_executor.PreloadingLocalExecutor`` finds it."""

from __future__ import annotations

from airflow.executors.local_executor import LocalExecutor
from flightplan.preload import preload_task_modules


class PreloadingLocalExecutor(LocalExecutor):
    def start(self) -> None:
        # Before super().start(): it forks the workers, and later ones are forked from this process too.
        preload_task_modules()
        super().start()
