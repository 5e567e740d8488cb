"""
### rollback

Moves a pipeline's `champion` back to the `previous` version (the one the last promotion replaced) and
has the inference API load it. The alias `previous` is then cleared, so running it twice does not go
further back by accident.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from shared import CHAMPION, dag_options, pipeline_param, run_context


@dag(
    dag_id="rollback",
    schedule=None,
    doc_md=__doc__,
    **dag_options("deployment", retries=0),
    params={
        "pipeline": pipeline_param(),
        "reason": Param("manual rollback", type="string", description="Why (kept on the registry version)"),
    },
)
def rollback() -> None:
    @task(outlets=[CHAMPION])
    def move_champion_back() -> dict[str, str | None]:
        from flightplan.serving.deploy import DeployJob
        from flightplan.serving.deploy import rollback as roll_back

        context = get_current_context()
        job = DeployJob(context["params"]["pipeline"], run_context(context), reason=context["params"]["reason"])
        moved = roll_back(job, job.reason)
        context["outlet_events"][CHAMPION].extra = {"pipeline": job.pipeline, **moved}
        return moved

    @task(retries=2)
    def reload_service() -> str:
        from flightplan.serving.deploy import DeployJob, reload_service

        context = get_current_context()
        return reload_service(DeployJob(context["params"]["pipeline"], run_context(context)))

    move_champion_back() >> reload_service()


rollback()
