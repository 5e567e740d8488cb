"""
### rollback

Moves a pipeline's `champion` back to the `previous` version (the one the last promotion replaced) and
has the inference API load it. The alias `previous` is then cleared, so running it twice does not go
further back by accident. One DAG per pipeline (`<pipeline>.rollback`).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from flightplan import orchestration
from flightplan.config import PipelineConfig
from shared import PIPELINES, asset, dag_options, job


def build(config: PipelineConfig) -> None:
    pipeline = config.name
    champion = asset(pipeline, "champion")

    @dag(
        schedule=None,
        doc_md=__doc__,
        **dag_options(config, "rollback", retries=0),
        params={"reason": Param("manual rollback", type="string", description="Why (kept on the registry version)")},
    )
    def rollback() -> None:
        @task(outlets=[champion])
        def move_champion_back() -> dict[str, str | None]:
            from flightplan.deployment.stages import rollback as roll_back

            rollback_job = job(pipeline, orchestration.rollback_job)
            moved = roll_back(rollback_job, rollback_job.reason)
            get_current_context()["outlet_events"][champion].extra = {"pipeline": pipeline, **moved}
            return moved

        @task(retries=2)
        def reload_service() -> str:
            from flightplan.deployment.stages import reload_service

            return reload_service(job(pipeline, orchestration.rollback_job))

        move_champion_back() >> reload_service()

    rollback()


for pipeline_config in PIPELINES.configs.values():
    build(pipeline_config)
