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
fails with the reason. With `deployment.watch_hours` set, **watch_champion** then has the replaced champion
answer again in shadow and judges the new one on the labeled live rows both answered, deferred between looks;
if the replaced one does better by the margin, `champion` moves back to it and the run fails saying why.

One DAG per pipeline (`<pipeline>.deployment`), scheduled by that pipeline's `<pipeline>.challenger` asset
(its model_engineering's register task): an approval pending for one pipeline holds none of the others.
Trigger it by hand to deploy a chosen registry `version`. The `<pipeline>.rollback` DAG moves the champion
back on demand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import BaseOperator, Context, Param, chain, dag, get_current_context, task
from flightplan import orchestration
from flightplan.config import PipelineConfig
from shared import PIPELINES, asset, dag_options, job

if TYPE_CHECKING:
    from flightplan.deployment.stages import DeployJob


class LooksDeferred(BaseOperator):
    """Calls ``begin`` once, then ``look`` until a look says it is ``done``; between looks the task is deferred on a
    timer in the triggerer (the look's ``poll_seconds``), so a wait of hours or days holds no worker slot. Each
    look is given what ``begin`` and the previous look returned, and when the task began (``since``): kept as
    an XCom of the task, which a resumption keeps (``airflow dags test`` passes a resumed task only its event)."""

    STATE = "looks"

    def __init__(
        self, *, begin: Callable[[], dict[str, Any]], look: Callable[[dict[str, Any]], dict[str, Any]], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.begin = begin
        self.look = look

    def execute(self, context: Context) -> dict[str, Any]:
        context["ti"].xcom_push(self.STATE, {**self.begin(), "since": datetime.now(UTC).isoformat()})
        return self.look_again(context)

    def look_again(self, context: Context, event: Any = None) -> dict[str, Any]:
        state = context["ti"].xcom_pull(task_ids=self.task_id, key=self.STATE)
        found = self.look(state)
        if not found["done"]:
            context["ti"].xcom_push(self.STATE, {**state, **found})
            self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=found["poll_seconds"])), method_name="look_again")
        return found


def judged(pipeline: str) -> DeployJob:
    """This run's deployment, its version pinned to the candidate that ``compare`` judged: the `challenger` alias
    may move while the run waits."""
    deploying = job(pipeline, orchestration.deploy_job)
    return dataclasses.replace(
        deploying, version=get_current_context()["ti"].xcom_pull(task_ids="compare")["candidate"]
    )


def live_gate(pipeline: str) -> list[Any]:
    """The live gate's tasks, in order: wait for the labeled live rows, then judge the candidate on them."""

    def begin() -> dict[str, Any]:
        from flightplan.deployment import live

        return live.start(judged(pipeline))

    def look(state: dict[str, Any]) -> dict[str, Any]:
        from flightplan.deployment import live

        return live.counted(judged(pipeline), datetime.fromisoformat(state["since"]))

    @task
    def live_compare() -> dict[str, Any]:
        from flightplan.deployment import live

        return live.decide(judged(pipeline))

    return [LooksDeferred(task_id="wait_for_live_rows", begin=begin, look=look), live_compare()]


def watch_champion(pipeline: str) -> LooksDeferred:
    """The watch after the promotion: rolls the new champion back if the replaced one does better live."""

    def begin() -> dict[str, Any]:
        from flightplan.deployment import watch

        promoted = get_current_context()["ti"].xcom_pull(task_ids="promote")["champion"]
        return watch.start(job(pipeline, orchestration.deploy_job), promoted)

    def look(state: dict[str, Any]) -> dict[str, Any]:
        from flightplan.deployment import watch

        if not state["watching"]:
            return {**state, "done": True}
        since = datetime.fromisoformat(state["since"])
        return watch.watched(
            job(pipeline, orchestration.deploy_job), state["champion"], since, state.get("judged_rows", 0)
        )

    return LooksDeferred(task_id="watch_champion", begin=begin, look=look)


def roll_back_task(pipeline: str) -> Any:
    """On a failed check after the promotion: `champion` back to the version it replaced, and the run fails."""

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

    return roll_back()


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

            result = stages.promote(judged(pipeline))
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

        promoted = promote()
        checks = [reload_service(), smoke_test()]
        gates = [compare(), *(live_gate(pipeline) if config.deployment.live_rows else [])]
        chain(*gates, approval_needed(), [approve, promoted])
        approve >> promoted >> checks[0] >> checks[1]
        checks >> roll_back_task(pipeline)
        if config.deployment.watch_hours:
            checks[1] >> watch_champion(pipeline)

    deployment()


for pipeline_config in PIPELINES.configs.values():
    build(pipeline_config)
