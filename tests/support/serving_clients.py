"""Clients of the inference API as the serving tests drive it: the records they send, the load they put on a
server process, and what they find in its prediction log."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import sqlalchemy as sa
from flightplan.layout import Layout
from flightplan.manifests import LatestSplit, SplitManifest
from flightplan.model.stages import read_side
from flightplan.serving.inputs import json_records, request_fields

from tests.support.service import scoped_tokens

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEEDBACK_AUTH = {"Authorization": f"Bearer {scoped_tokens(TOKEN)['feedback']}"}
ADMIN_AUTH = {"Authorization": f"Bearer {scoped_tokens(TOKEN)['admin']}"}


def auth_for(path: str) -> dict[str, str]:
    """The header of the token whose scope the route at ``path`` asks."""
    if path == "/admin/reload":
        return ADMIN_AUTH
    return FEEDBACK_AUTH if path.endswith(("/feedback", "/records")) else AUTH


def client_records(layout: Layout, run_id: str, rows: int | None = None) -> list[dict[str, Any]]:
    """Rows of the run's test side as a client would send them: the raw request fields only."""
    frame = pd.read_parquet(layout.model_run(run_id) / "frames" / "test.parquet")
    return json_records(frame.head(rows) if rows else frame, list(request_fields(layout.config)))


def split_records(layout: Layout, rows: int) -> list[dict[str, Any]]:
    """Rows of the newest split's test side as a client would send them, for tests that train no model."""
    manifest = SplitManifest.read(Path(LatestSplit.read(layout.splits / "latest.json").manifest))
    frame = read_side(manifest.paths["test"], layout.config)
    return json_records(frame.head(rows), list(request_fields(layout.config)))


def predictions_in_log(url: str, request_ids: list[str] | None = None) -> int:
    """How many answered rows the log at ``url`` holds (of ``request_ids`` only, when given): rows of text and
    rows of the requests logged as columns."""
    counts = [
        "select count(*) from predictions where {}",
        "select coalesce(sum(rows), 0) from prediction_segments where request_id is not null and {}",
    ]
    if request_ids is None:
        chosen = ["1 = 1"]
    else:
        quoted = [f"'{request}'" for request in request_ids]
        chosen = [f"request_id in ({','.join(quoted[at : at + 500])})" for at in range(0, len(quoted), 500)]
    engine = sa.create_engine(url)
    found = 0
    with engine.connect() as connection:
        for where in chosen:
            found += sum(int(connection.execute(sa.text(count.format(where))).scalar_one()) for count in counts)
    engine.dispose()
    return found


def rows_answered(answers: list[dict[str, Any]]) -> int:
    """Prediction rows in ``answers``: one per single request, one per record of a batch."""
    return sum(len(answer.get("predictions", [answer])) for answer in answers)


@dataclass(frozen=True)
class Sent:
    """One request of a load: when it was sent (``time.monotonic``), how long its answer took, its status
    (None: no HTTP answer at all)."""

    at: float
    seconds: float
    status: int | None


class Load:
    """Client threads sending single and batch requests (every fifth a batch of 20) until stopped: as fast as
    the answers come or, given ``rate``, at that many requests per second in all (a thread whose answers come
    late sends its next request at once, not a burst to catch up). Every answer is kept, every failure
    described, every request timed."""

    def __init__(self, url: str, records: list[dict[str, Any]], threads: int = 6, rate: float | None = None) -> None:
        self.url, self.records, self.rate = url, records, rate
        self.answers: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.sent: list[Sent] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i, threads)) for i in range(threads)]

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def run(self, worker: int, threads: int) -> None:
        interval = threads / self.rate if self.rate else 0.0
        next_send = self.started + (worker / self.rate if self.rate else 0.0)
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=30) as http:
            i = worker
            while not self.stop.wait(max(0.0, next_send - time.monotonic())):
                i += 1
                at = time.monotonic()
                next_send = max(next_send + interval, at)
                try:
                    if i % 5 == 0:
                        response = http.post("/v1/flights/predict/batch", json={"records": self.records[:20]})
                    else:
                        response = http.post("/v1/flights/predict", json=self.records[i % len(self.records)])
                except httpx.TransportError as err:
                    self.sent.append(Sent(at, time.monotonic() - at, None))
                    self.failures.append(f"transport: {err!r}")
                    continue
                self.sent.append(Sent(at, time.monotonic() - at, response.status_code))
                if response.status_code == 200:
                    self.answers.append(response.json())
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
