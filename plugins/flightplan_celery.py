"""The Celery configuration of the compose stack's workers: Airflow's own, and the libraries the stages import
(``flightplan.preload``) imported in each worker's main process before it forks its pool, so that a task
process, forked from a pool process, does not import them again.

Not a plugin: listed in this folder's .airflowignore. Airflow puts the plugins folder on ``sys.path``, which is
how ``[celery] celery_config_options = flightplan_celery.CELERY_CONFIG`` finds it. The scheduler imports this
module too, to configure its CeleryExecutor; the signal below fires only in a worker."""

from __future__ import annotations

import gc
from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init
from flightplan.preload import preload_task_modules

CELERY_CONFIG = DEFAULT_CELERY_CONFIG


@worker_init.connect
def preload_before_the_pool_forks(**_: Any) -> None:
    preload_task_modules()
    # Airflow froze the collector's generations before this signal; the preloaded objects join them, so that the
    # pool processes' collections do not write to (and so copy) their pages. Airflow unfreezes at worker_ready.
    gc.freeze()
