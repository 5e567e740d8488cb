"""A client of Airflow's REST API v2 for the commands that drive a running Airflow (the demo, the tests):
log in, pause and unpause DAGs, start runs and follow them. It talks HTTP only: nothing of Airflow is
imported, so the library stays free of it."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Collection
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx

PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
ADMIN = "admin"  # the user the embedded stack's simple auth manager is given
FINISHED = ("success", "failed")
ENDED_TASK_STATES = ("success", "failed", "skipped", "upstream_failed", "removed")  # a task in none of these may go on


class RetryingTransport(httpx.HTTPTransport):
    """Retries a server error: on SQLite, an API write can time out on the database lock (5 s) while the
    scheduler and the tasks write, and a real client retries such a request. Only requests that mean the same
    when sent twice go through it: a run is started under a run id chosen here, so a second attempt after
    one that did commit is refused (409), not a second run."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(4):
            response = super().handle_request(request)
            if response.status_code < 500:
                return response
            response.read()
            response.close()
            time.sleep(2)
        return super().handle_request(request)


def log_line(message: str | dict[str, Any]) -> str:
    """One message of a task log as text: its event with the reason it gives (a skipped task's), and each
    exception it carries as `type: value` (Airflow keeps a traceback as structured frames beside the event)."""
    if isinstance(message, str):
        return message
    event = " ".join(str(message[key]) for key in ("event", "reason") if message.get(key))
    errors = message.get("error_detail") or []
    return "\n".join([event, *(f"{e.get('exc_type')}: {e.get('exc_value')}" for e in errors)])


def admin_password(airflow_home: Path, user: str = ADMIN) -> str:
    """The password Airflow's simple auth manager generated for ``user``."""
    return str(json.loads((airflow_home / PASSWORDS_FILE).read_text())[user])


class AirflowApi:
    """REST API v2 calls, logged in as one user of the simple auth manager."""

    def __init__(self, base_url: str, airflow_home: Path, user: str = ADMIN) -> None:
        self.base_url = base_url.rstrip("/")
        credentials = {"username": user, "password": admin_password(airflow_home, user)}
        token = httpx.post(f"{self.base_url}/auth/token", json=credentials, timeout=30)
        token.raise_for_status()
        self.token = str(token.json()["access_token"])
        self.http = httpx.Client(
            base_url=f"{self.base_url}/api/v2",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
            transport=RetryingTransport(),
        )

    def close(self) -> None:
        self.http.close()

    def wait_until_parsed(self, dag_id: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.http.get(f"/dags/{dag_id}").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dag-processor never parsed {dag_id}")
            time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.http.patch(f"/dags/{dag_id}", json={"is_paused": paused}).raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        """Starts a run now (no logical date: the run's Params carry its interval); returns the run."""
        run_id = f"manual__{datetime.now(UTC).isoformat()}_{secrets.token_hex(4)}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        started = self.http.post(f"/dags/{dag_id}/dagRuns", json=body)
        if started.status_code == 409:  # an earlier attempt of this very request was committed
            return self.run(dag_id, run_id)
        started.raise_for_status()
        return dict(started.json())

    def runs(self, dag_id: str, run_type: str | None = None) -> list[dict[str, Any]]:
        """The DAG's runs (only those of ``run_type`` when given: manual, scheduled, backfill, asset_triggered),
        oldest logical date first."""
        params: dict[str, str | int] = {"order_by": "logical_date", "limit": 1000}
        if run_type:
            params["run_type"] = run_type
        found = self.http.get(f"/dags/{dag_id}/dagRuns", params=params)
        found.raise_for_status()
        return list(found.json()["dag_runs"])

    def backfill(
        self, dag_id: str, first: date, last: date, reprocess: str, max_active_runs: int = 1
    ) -> dict[str, Any]:
        """Starts Airflow's backfill of the runs whose logical dates fall in [first, last] (midnights, UTC);
        ``reprocess`` says which existing runs it runs again: none, failed or completed. Returns the backfill."""
        body = {
            "dag_id": dag_id,
            "from_date": f"{first.isoformat()}T00:00:00Z",
            "to_date": f"{last.isoformat()}T00:00:00Z",
            "reprocess_behavior": reprocess,
            "max_active_runs": max_active_runs,
        }
        started = self.http.post("/backfills", json=body)
        if started.status_code == 409:  # an earlier attempt of this very request was committed: that backfill runs
            active = self.http.get("/backfills", params={"dag_id": dag_id, "order_by": "-id", "limit": 1})
            return dict(active.json()["backfills"][0])
        started.raise_for_status()
        return dict(started.json())

    def wait_for_backfill(self, backfill_id: int, timeout: float = 1800) -> dict[str, Any]:
        """The backfill once the scheduler has marked it complete (every run it created has finished)."""
        deadline = time.monotonic() + timeout
        while (found := self.http.get(f"/backfills/{backfill_id}").json())["completed_at"] is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill {backfill_id} of {found['dag_id']} did not complete in {timeout:g} s")
            time.sleep(3)
        return dict(found)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        found = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        found.raise_for_status()
        return dict(found.json())

    def mark(self, dag_id: str, run_id: str, state: str) -> None:
        """Sets a run's state, as the UI's "Mark run as" does: ``failed`` stops what it is running."""
        self.http.patch(f"/dags/{dag_id}/dagRuns/{run_id}", json={"state": state}).raise_for_status()

    def returned(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """What a task of the run returned (its ``return_value`` XCom), as the value it stored."""
        found = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
        found.raise_for_status()
        return found.json()["value"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances: each one's id, state, start, end and duration."""
        found = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        found.raise_for_status()
        return list(found.json()["task_instances"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        """One task instance of a run: its state, try number, id."""
        found = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        found.raise_for_status()
        return dict(found.json())

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int | None = None) -> list[str]:
        """The lines of a task's log (its latest try unless ``try_number`` says), as Airflow's log view shows them:
        read from the worker's file, running or finished."""
        if try_number is None:
            try_number = int(self.task_instance(dag_id, run_id, task_id)["try_number"])
        log = self.http.get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}", params={"full_content": True}
        )
        log.raise_for_status()
        return [log_line(message) for message in log.json()["content"]]

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 900,
        progress: Callable[[dict[str, str | None]], None] | None = None,
    ) -> str:
        """The run's final state (or its state when ``timeout`` seconds have passed); ``progress`` is told the
        task states on every poll."""
        deadline = time.monotonic() + timeout
        state = "queued"
        while state not in FINISHED and time.monotonic() < deadline:
            time.sleep(3)
            state = self.run(dag_id, run_id)["state"]
            if progress is not None:
                progress(self.task_states(dag_id, run_id))
        return state

    def wait_for_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        state: str | Collection[str],
        timeout: float = 600,
        every: float = 3.0,
    ) -> None:
        """Returns once the task is in ``state`` (or one of them), looking ``every`` seconds: often for a task in a
        state a few seconds long. Raises at once when the task ended in another state."""
        wanted = {state} if isinstance(state, str) else set(state)
        deadline = time.monotonic() + timeout
        while (found := (states := self.task_states(dag_id, run_id)).get(task_id)) not in wanted:
            if found in ENDED_TASK_STATES:
                raise RuntimeError(f"{dag_id}.{task_id} ended {found} before it was seen {sorted(wanted)}: {states}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id}.{task_id} never reached {sorted(wanted)}: {states}")
            time.sleep(every)

    def newest_run(self, dag_id: str, after: str) -> dict[str, Any] | None:
        """The newest run of ``dag_id`` whose ``run_after`` is later than ``after`` (an ISO time), if any."""
        params: dict[str, str | int] = {"order_by": "-run_after", "limit": 1}
        runs = self.http.get(f"/dags/{dag_id}/dagRuns", params=params).json()["dag_runs"]
        return runs[0] if runs and runs[0]["run_after"] > after else None

    def wait_for_new_run(self, dag_id: str, after: str, timeout: float = 600) -> dict[str, Any]:
        """The newest run of ``dag_id`` once one has started after ``after``: one an asset event or another
        DAG creates."""
        deadline = time.monotonic() + timeout
        while (found := self.newest_run(dag_id, after)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {dag_id} run was started after {after}")
            time.sleep(3)
        return found
