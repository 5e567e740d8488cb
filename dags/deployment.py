"""
### deployment

From a new `challenger` to the served `champion`, safely:

**compare** (the candidate against the champion on the newest labeled days, less the rows either trained
on; a loss stops here) → with `deployment.live_rows` set, **wait_for_live_rows** (the candidate becomes the
`challenger` the service answers with in shadow or canary; the task waits deferred, holding no worker, until
that many of the rows both versions answered have their true label) → **live_compare** (a paired bootstrap
on those rows; a candidate not surely better by the margin stops here) →
**approve** (only when the pipeline's `deployment.require_approval` is on: a person answers in the
Airflow UI; no answer in 24 h is a rejection) → **promote** (`champion` → the candidate, `previous` → the
old champion) → **reload_service** (the inference API loads it now) → **smoke_test** (recent records
through the live API) → on any failure after the promotion, **roll_back** moves `champion` back and the run
fails with the reason.

One DAG per pipeline (`<pipeline>.deployment`), scheduled by that pipeline's `<pipeline>.challenger` asset
(its model_engineering's register task): an approval pending for one pipeline holds none of the others.
Trigger it by hand to deploy a chosen registry `version`. The `<pipeline>.rollback` DAG moves the champion
back on demand.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import BaseOperator, Context, Param, chain, dag, get_current_context, task
from flightplan import orchestration
from flightplan.config import PipelineConfig
from shared import PIPELINES, asset, dag_options, job


class WaitForLiveRows(BaseOperator):
    """Has the service answer with the candidate, then counts its labeled live rows until it has enough; between
    counts the task is deferred on a timer in the triggerer, so a wait of days holds no worker slot."""

    def __init__(self, *, pipeline: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline

    def execute(self, context: Context) -> dict[str, Any]:
        from flightplan.deployment import live

        live.start(job(self.pipeline, orchestration.deploy_job))
        return self.count_again(context, since=datetime.now(UTC).isoformat())

    def count_again(self, context: Context, since: str, event: Any = None) -> dict[str, Any]:
        from flightplan.deployment import live

        count = live.counted(job(self.pipeline, orchestration.deploy_job), datetime.fromisoformat(since))
        if not count["ready"]:
            self.defer(
                trigger=TimeDeltaTrigger(timedelta(seconds=count["poll_seconds"])),
                method_name="count_again",
                kwargs={"since": since},
            )
        return count


def live_gate(pipeline: str) -> list[Any]:
    """The live gate's tasks, in order: wait for the labeled live rows, then judge the candidate on them."""

    @task
    def live_compare() -> dict[str, Any]:
        from flightplan.deployment import live

        return live.decide(job(pipeline, orchestration.deploy_job))

    return [WaitForLiveRows(task_id="wait_for_live_rows", pipeline=pipeline), live_compare()]


def build(config: PipelineConfig) -> None:
    pipeline = config.name
    champion = asset(pipeline, "champion")

    @dag(
        schedule=[asset(pipeline, "challenger")],
        doc_md=__doc__,
        **dag_options(config, "deployment", retries=0),
        params={
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
            from flightplan.deployment import stages

            return stages.compare(job(pipeline, orchestration.deploy_job))

        @task.branch
        def approval_needed() -> str:
            from flightplan.layout import open_pipeline

            return "approve" if open_pipeline(pipeline)[1].deployment.require_approval else "promote"

        approve = ApprovalOperator(
            task_id="approve",
            subject=f"Promote a new champion for {pipeline}?",
            body=(
                f"Pipeline **{pipeline}**: version {{{{ ti.xcom_pull(task_ids='compare')['candidate'] }}}} of "
                f"`{config.registered_model}` against the champion on recent labeled data:\n\n"
                "```\n{{ ti.xcom_pull(task_ids='compare') }}\n```"
            ),
            defaults="Reject",
            response_timeout=timedelta(hours=24),
        )

        @task(trigger_rule="none_failed_min_one_success", outlets=[champion], retries=2)
        def promote() -> dict[str, Any]:
            from flightplan.deployment import stages

            result = stages.promote(job(pipeline, orchestration.deploy_job))
            get_current_context()["outlet_events"][champion].extra = {"pipeline": pipeline, **result}
            return result

        @task(retries=2, retry_delay=timedelta(seconds=10))
        def reload_service() -> str:
            from flightplan.deployment import stages

            return stages.reload_service(job(pipeline, orchestration.deploy_job))

        @task
        def smoke_test() -> dict[str, Any]:
            from flightplan.deployment import stages

            return stages.smoke_test(job(pipeline, orchestration.deploy_job))

        @task(trigger_rule="one_failed")
        def roll_back() -> None:
            from flightplan.deployment import stages

            deploying = job(pipeline, orchestration.deploy_job)
            promoted = get_current_context()["ti"].xcom_pull(task_ids="promote")
            if not promoted:
                raise stages.RolledBack("nothing was promoted by this run; the champion is unchanged")
            moved = stages.rollback(
                deploying, f"failed checks in deployment run {deploying.context.run_id}", promoted["champion"]
            )
            try:
                stages.reload_service(deploying)
            except stages.ServiceCheckFailed as err:
                moved["reload"] = str(err)
            raise stages.RolledBack(
                f"the checks after promoting version {promoted['champion']} failed; rolled back: {moved}"
            )

        promoted = promote()
        checks = [reload_service(), smoke_test()]
        gates = [compare(), *(live_gate(pipeline) if config.deployment.live_rows else [])]
        chain(*gates, approval_needed(), [approve, promoted])
        approve >> promoted >> checks[0] >> checks[1]
        checks >> roll_back()

    deployment()


for pipeline_config in PIPELINES.configs.values():
    build(pipeline_config)
