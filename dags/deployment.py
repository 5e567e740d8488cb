"""
### deployment

From a new `challenger` to the served `champion`, safely:

**compare** (the candidate against the champion on the newest labeled days; a loss stops here) →
**approve** (only when the pipeline's `deployment.require_approval` is on: a person answers in the
Airflow UI; no answer in 24 h is a rejection) → **promote** (`champion` → the candidate, `previous` → the
old champion) → **reload_service** (the inference API loads it now) → **smoke_test** (recent records
through the live API) → on any failure after the promotion, **roll_back** moves `champion` back and the run
fails with the reason.

Scheduled by the `flightplan_challenger` asset (model_engineering's register task). Trigger it by hand to
deploy a chosen registry `version`. The `rollback` DAG moves the champion back on demand.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, get_current_context, task
from shared import CHALLENGER, CHAMPION, dag_options, pipeline_param, run_context, triggering_event


def deploy_job() -> Any:
    """The pipeline and version from the challenger event that triggered the run, else from its Params."""
    from flightplan.serving.deploy import DeployJob

    context = get_current_context()
    params = context["params"]
    event = triggering_event(context)
    if event:
        return DeployJob(event["pipeline"], run_context(context), event.get("version"), "new challenger")
    return DeployJob(
        params["pipeline"], run_context(context), params.get("version") or None, params["reason"] or "manual"
    )


@dag(
    dag_id="deployment",
    schedule=[CHALLENGER],
    doc_md=__doc__,
    **dag_options("deployment", retries=0),
    params={
        "pipeline": pipeline_param(),
        "version": Param(
            None, type=["null", "string"], description="Registry version to deploy; empty: the `challenger`"
        ),
        "reason": Param(
            None, type=["null", "string"], description="Why (kept in MLflow and on the registry version); optional"
        ),
    },
)
def deployment() -> None:
    @task
    def compare() -> dict[str, Any]:
        from flightplan.serving import deploy

        return deploy.compare(deploy_job())

    @task.branch
    def approval_needed() -> str:
        job = deploy_job()
        return "approve" if job.open()[1].deployment.require_approval else "promote"

    approve = ApprovalOperator(
        task_id="approve",
        subject="Promote a new champion for {{ params.pipeline }}?",
        body="Comparison on recent labeled data:\n\n```\n{{ ti.xcom_pull(task_ids='compare') }}\n```",
        defaults="Reject",
        response_timeout=timedelta(hours=24),
    )

    @task(trigger_rule="none_failed_min_one_success", outlets=[CHAMPION], retries=2)
    def promote() -> dict[str, Any]:
        from flightplan.serving import deploy

        job = deploy_job()
        result = deploy.promote(job)
        get_current_context()["outlet_events"][CHAMPION].extra = {"pipeline": job.pipeline, **result}
        return result

    @task(retries=2, retry_delay=timedelta(seconds=10))
    def reload_service() -> str:
        from flightplan.serving import deploy

        return deploy.reload_service(deploy_job())

    @task
    def smoke_test() -> dict[str, Any]:
        from flightplan.serving import deploy

        return deploy.smoke_test(deploy_job())

    @task(trigger_rule="one_failed")
    def roll_back() -> None:
        from flightplan.serving import deploy

        job = deploy_job()
        promoted = get_current_context()["ti"].xcom_pull(task_ids="promote")
        if not promoted:
            raise deploy.RolledBack("nothing was promoted by this run; the champion is unchanged")
        moved = deploy.rollback(job, f"failed checks in deployment run {job.context.run_id}", promoted["champion"])
        try:
            deploy.reload_service(job)
        except deploy.ServiceCheckFailed as err:
            moved["reload"] = str(err)
        raise deploy.RolledBack(
            f"the checks after promoting version {promoted['champion']} failed; rolled back: {moved}"
        )

    promoted = promote()
    checks = [reload_service(), smoke_test()]
    compare() >> approval_needed() >> [approve, promoted]
    approve >> promoted >> checks[0] >> checks[1]
    checks >> roll_back()


deployment()
