"""The flightplan pages inside the Airflow UI (Browse → Models): the champion and challenger of each
pipeline, the monitoring verdicts and reports, a one-click deploy, the curated data and the label queue.

Airflow mounts plugin apps without its authentication: this plugin requires a logged-in Airflow user on
every route, checked by Airflow's own token validation (the UI's session cookie, or a bearer token), and asks
Airflow's auth manager what that user may do with the pipeline's DAGs, as Airflow's own routes do. Its forms
post with that cookie, which Airflow sets SameSite=Lax, so another site cannot post them for a user.
The pages themselves live in ``flightplan.ui``; this file only wires them to Airflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.batch_apis import IsAuthorizedDagRequest
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.plugins_manager import AirflowPlugin
from fastapi import HTTPException, Request
from flightplan.ui.app import Access, create_ui

# What each access of the pages is in Airflow's terms: reading a DAG, editing it, starting a run of it.
DAG_ACCESS: dict[Access, tuple[Any, DagAccessEntity | None]] = {
    "read": ("GET", None),
    "edit": ("PUT", None),
    "run": ("POST", DagAccessEntity.RUN),
}


@dataclass(frozen=True)
class AirflowVisitor:
    """A logged-in Airflow user, whose permissions Airflow's configured auth manager decides."""

    user: BaseUser

    @property
    def name(self) -> str:
        return str(self.user.get_name())

    def may(self, access: Access, dag_ids: list[str]) -> bool:
        method, entity = DAG_ACCESS[access]
        requests: list[IsAuthorizedDagRequest] = [
            {"method": method, "access_entity": entity, "details": DagDetails(id=dag)} for dag in dag_ids
        ]
        return get_auth_manager().batch_is_authorized_dag(requests, user=self.user)


async def current_user(user: GetUserDep) -> AirflowVisitor:
    return AirflowVisitor(user)


async def airflow_api(request: Request, method: str, path: str, body: dict[str, Any]) -> Any:
    """Airflow's REST API in this process, as the user who asked (their permissions, audit log and name)."""
    import httpx
    from airflow.api_fastapi.main import app as airflow_app

    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME_JWT_TOKEN, "")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=airflow_app), base_url="http://airflow") as api:
        return await api.request(method, f"/api/v2{path}", json=body, headers={"Authorization": f"Bearer {token}"})


async def trigger_dag(request: Request, dag_id: str, conf: dict[str, Any]) -> str:
    """Starts a run now (no logical date); returns the run id."""
    response = await airflow_api(request, "POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
    if response.status_code != 200:
        raise HTTPException(response.status_code, f"Airflow refused to start {dag_id}: {response.text}")
    return str(response.json()["dag_run_id"])


async def latest_runs(request: Request, dag_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The newest run of each DAG (one batch request), or nothing for those the user may not see."""
    newest: dict[str, dict[str, Any]] = {}
    for page in range(0, len(dag_ids), 100):
        body = {"dag_ids": dag_ids[page : page + 100], "order_by": "-run_after", "page_limit": 1000}
        response = await airflow_api(request, "POST", "/dags/~/dagRuns/list", body)
        if response.status_code != 200:
            return newest
        for run in response.json()["dag_runs"]:
            newest.setdefault(run["dag_id"], run)
    return newest


class FlightplanPlugin(AirflowPlugin):
    name = "flightplan"
    # Airflow declares these on AirflowPlugin as instance attributes, and reads them off the class.
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [  # type: ignore[misc]
        {"app": create_ui(current_user, trigger_dag, latest_runs), "url_prefix": "/flightplan", "name": "flightplan"}
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [  # type: ignore[misc]
        {
            "name": "Models",
            "href": "flightplan/",
            "url_route": "flightplan",
            "destination": "nav",
            "category": "browse",
        }
    ]
