"""The inference API when what it stands on fails: its prediction log's writer when its database ends a
connection or a commit waits on a lock; the service as its own process under load when its PostgreSQL log is
out of reach for a few seconds (behind a TCP proxy the test cuts), or when the process itself is killed."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flightplan.layout import Layout
from flightplan.prediction_log import AnsweredRequest, PredictionLog, create_store_engine
from flightplan.serving.app import LOG_WAIT_SECONDS
from flightplan.settings import Settings

from tests.support.engines import postgres_database, postgres_problem, require
from tests.support.service import free_port, service_process
from tests.support.serving_clients import AUTH, TOKEN, Load, client_records, predictions_in_log, rows_answered

UNAVAILABLE = "the prediction log is unavailable"


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``, byte for byte, until told otherwise: ``cut`` closes every
    connection and refuses new ones (a database that went away), ``stall`` keeps them open but forwards
    nothing (a network that drops packets), ``restore`` forwards again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self.flowing = threading.Event()
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None

    def __enter__(self) -> TcpProxy:
        self.restore()
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()
        self.flowing.set()  # stalled forwarders finish

    def restore(self) -> None:
        self.flowing.set()
        if self.listener is None:
            self.listener = socket.create_server(("127.0.0.1", self.port))
            threading.Thread(target=self.accept, args=(self.listener,), daemon=True).start()

    def stall(self) -> None:
        self.flowing.clear()

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            # shutdown, not close alone: on Linux only shutdown wakes a thread blocked on the socket.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self.lock:
            connections, self.connections = self.connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self.lock:
                self.connections |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self.forward, args=(source, sink), daemon=True).start()

    def forward(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                self.flowing.wait()
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxied_log() -> Iterator[dict[str, Any]]:
    """A new PostgreSQL database for the prediction log, reached through a proxy the test controls."""
    require("PostgreSQL", postgres_problem())
    with postgres_database("outage") as url, TcpProxy(("127.0.0.1", 5432)) as proxy:
        yield {"url": url, "proxied": url.replace(":5432/", f":{proxy.port}/"), "proxy": proxy}


def answered(request_id: str) -> AnsweredRequest:
    return AnsweredRequest(request_id, "flights", "1", [request_id], ["{}"], ["1"], [0.5])


@pytest.mark.parametrize("next_write", ["served", "shadow"])
def test_a_connection_the_database_closed_while_idle_is_replaced_without_failing_rows(next_write: str) -> None:
    """The writer keeps its connection between batches; the database ends it (a restart, a failover): the next
    write, served answers or answers given in shadow, is committed on a new connection instead of failing."""
    require("PostgreSQL", postgres_problem())
    with postgres_database("idle") as url:
        engine = create_store_engine(url)
        log = PredictionLog(engine)
        assert log.submit(answered("before")).result(timeout=10) is None
        with engine.connect() as admin:
            ended = admin.execute(
                sa.text(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = current_database() and pid <> pg_backend_pid()"
                )
            ).all()
        assert ended == [(True,)]  # the writer's connection, the only other one
        if next_write == "served":
            assert log.submit(answered("after")).result(timeout=10) is None
        else:
            assert log.submit_shadow(answered("before"), budget_seconds=60.0)
        log.close()
        with engine.connect() as connection:
            in_shadow = connection.execute(sa.text("select count(*) from shadow_answers")).scalar_one()
        engine.dispose()
        assert predictions_in_log(url, ["before", "after"]) == (2 if next_write == "served" else 1)
        assert in_shadow == (next_write == "shadow")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_writer_stores_any_text_exactly(database: str, tmp_path: Path) -> None:
    """What a client sent is stored as it was, whichever way the rows travel (PostgreSQL's COPY has its own
    escaping): separators, backslashes, COPY's null marker, quotes, non-ASCII, a missing probability."""
    hostile = ["a\tb\nc", "\\N", "\\", "\\.", "'; drop table predictions; --", '"quoted"', "é ✈ 中", "\r\x7f"]
    rows = AnsweredRequest(
        "hostile", "flights", "1", [f"hostile-{i}" for i in range(len(hostile))], hostile, hostile[::-1], [None] * 8
    )
    with contextlib.ExitStack() as stack:
        if database == "sqlite":
            url = f"sqlite:///{tmp_path / 'log.db'}"
        else:
            require("PostgreSQL", postgres_problem())
            url = stack.enter_context(postgres_database("text"))
        engine = create_store_engine(url)
        stack.callback(engine.dispose)
        log = PredictionLog(engine)
        log.submit(rows).result(timeout=10)
        log.close()
        with engine.connect() as connection:
            stored = connection.execute(sa.text("select id, inputs, prediction, probability from predictions")).all()
    assert sorted(stored) == sorted(zip(rows.ids, hostile, hostile[::-1], [None] * 8, strict=True))


def test_a_request_that_stops_waiting_leaves_the_writer_running(tmp_path: Path) -> None:
    """Rows queued behind a commit that waits on a lock: the request gives up (its future cancelled, as the
    API's bounded wait does); the writer drops those rows, not itself, and commits the next request's."""
    path = tmp_path / "log.db"
    engine = create_store_engine(f"sqlite:///{path}")
    log = PredictionLog(engine)
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN EXCLUSIVE")
    first = log.submit(answered("first"))
    deadline = time.monotonic() + 10
    while not first.running():  # taken by the writer, which now waits for the lock
        assert time.monotonic() < deadline
        time.sleep(0.05)
    gave_up = log.submit(answered("gave-up"))
    assert gave_up.cancel()
    blocker.rollback()
    blocker.close()
    assert first.result(timeout=30) is None
    assert log.submit(answered("next")).result(timeout=10) is None
    log.close()
    engine.dispose()
    assert predictions_in_log(f"sqlite:///{path}", ["first", "gave-up", "next"]) == 2
    assert predictions_in_log(f"sqlite:///{path}", ["gave-up"]) == 0


def predict(url: str, record: dict[str, Any]) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/flights/predict", json=record, headers=AUTH, timeout=60)
    return time.monotonic() - started, response


def test_log_outage_fails_requests_clearly_and_the_service_recovers_without_restart(
    champion: str,
    settings: Settings,
    layout: Layout,
    challenger: tuple[str, dict[str, str]],
    proxied_log: dict[str, Any],
) -> None:
    """While the log is out of reach a request is answered 503 saying so, within a bounded wait; once it is
    back the same process answers again; no request is answered 200 without its rows in the log."""
    proxy: TcpProxy = proxied_log["proxy"]
    records = client_records(layout, challenger[0], 200)
    env = {**os.environ, "FLIGHTPLAN_PREDICTIONS_DB": proxied_log["proxied"]}
    with service_process(settings, TOKEN, poll_seconds=3600, wait_ready=True, env=env) as server:
        url = server["url"]
        # The database goes away under load for 5 s, then comes back.
        with Load(url, records, threads=4) as load:
            time.sleep(2)
            proxy.cut()
            cut_at = time.monotonic()
            time.sleep(5)
            proxy.restore()
            restored_at = time.monotonic()
            deadline = restored_at + 30
            while not any(s.at > restored_at and s.status == 200 for s in list(load.sent)):
                assert time.monotonic() < deadline, server["output"].read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(1)
        during = [s for s in load.sent if cut_at + 0.5 < s.at < restored_at - 0.5]
        assert during and all(s.status == 503 for s in during), {s.status for s in during}
        assert all(s.seconds < LOG_WAIT_SECONDS + 2 for s in during)
        assert load.failures and all(f.startswith("503:") and UNAVAILABLE in f for f in load.failures), load.failures[
            :3
        ]
        answered = load.answers

        # It goes away and comes back while the service is idle: the next request is answered.
        proxy.cut()
        proxy.restore()
        _, response = predict(url, records[0])
        assert response.status_code == 200, response.text
        answered.append(response.json())

        # The network stops carrying packets: requests wait for a bounded time, then are refused.
        proxy.stall()
        with ThreadPoolExecutor(3) as pool:
            stalled = list(pool.map(lambda record: predict(url, record), records[:3]))
        proxy.restore()
        for seconds, response in stalled:
            assert response.status_code == 503 and UNAVAILABLE in response.json()["detail"], response.text
            assert LOG_WAIT_SECONDS <= seconds < LOG_WAIT_SECONDS + 5
        _, response = predict(url, records[1])
        assert response.status_code == 200, response.text
        answered.append(response.json())
        assert server["process"].poll() is None

    assert len(answered) > 50
    in_log = predictions_in_log(proxied_log["url"], [a["request_id"] for a in answered])
    assert in_log == rows_answered(answered)


def test_sigkill_under_load_loses_no_answered_prediction(
    champion: str, settings: Settings, layout: Layout, challenger: tuple[str, dict[str, str]]
) -> None:
    """Every request answered before the process is killed outright is in the SQLite log, and a new process
    serves on that log."""
    records = client_records(layout, challenger[0], 200)
    with (
        service_process(settings, TOKEN, poll_seconds=3600, wait_ready=True) as server,
        Load(server["url"], records) as load,
    ):
        time.sleep(3)
        server["process"].kill()
        server["process"].wait(30)
        time.sleep(0.5)
    answered = load.answers
    assert len(answered) > 50
    assert any(failure.startswith("transport") for failure in load.failures)  # the clients saw the kill
    assert predictions_in_log(settings.predictions_db_url, [a["request_id"] for a in answered]) == rows_answered(
        answered
    )
    with service_process(settings, TOKEN, poll_seconds=3600, wait_ready=True) as restarted:
        _, response = predict(restarted["url"], records[0])
        assert response.status_code == 200, response.text
