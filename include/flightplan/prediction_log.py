"""The durable record of every answered prediction and of the ground truth that arrives later.

SQLAlchemy over SQLite (WAL) by default, PostgreSQL in production (``FLIGHTPLAN_PREDICTIONS_DB``). Writes go
through one writer thread that commits whatever has queued up in one transaction (group commit), so
concurrent requests share a commit; a request is answered only once the future of its rows is resolved,
that is, once they are committed. A request that stops waiting cancels its future: rows not yet taken by the
writer are then dropped, as the request was not answered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("prediction", sa.Text, nullable=False),
    sa.Column("probability", sa.Float, nullable=True),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(80), nullable=False, index=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("source", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


class LogUnavailable(RuntimeError):
    """Rows not committed: the log's database failed or is out of reach, or the log is closed. The message is
    meant for the client (no address of the database in it); the server's log has the driver's error."""

    @classmethod
    def failed(cls, err: Exception) -> LogUnavailable:
        return cls(f"the prediction log is unavailable (its database failed: {type(err).__name__})")

    @classmethod
    def waited(cls, seconds: float) -> LogUnavailable:
        return cls(f"the prediction log is unavailable (no commit within {seconds:g} s)")


@dataclass(frozen=True)
class AnsweredRequest:
    """The rows one request answered, as they are logged: inputs and outputs already JSON text."""

    request_id: str
    pipeline: str
    model_version: str
    ids: list[str]
    inputs: list[str]
    predictions: list[str]
    probabilities: list[float | None]

    def rows(self, created_at: Any) -> Iterator[tuple[Any, ...]]:
        """Rows in the column order of the predictions table."""
        for row in zip(self.ids, self.inputs, self.predictions, self.probabilities, strict=True):
            yield (row[0], self.request_id, self.pipeline, self.model_version, created_at, *row[1:])


def create_store_engine(url: str) -> sa.Engine:
    """An engine on the prediction log. Its errors leave out the statement's parameters: those are the inputs
    and labels that clients sent, which have no place in a log or a traceback."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)

        @sa.event.listens_for(engine, "connect")
        def _durable_wal(connection: Any, _: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # a committed prediction survives a power cut
            cursor.close()

    else:
        engine = sa.create_engine(url, pool_pre_ping=True, hide_parameters=True)
    metadata.create_all(engine)
    return engine


def copy_statement(engine: sa.Engine) -> str | None:
    """The COPY that takes the log's rows on PostgreSQL through psycopg 3 (None elsewhere): per row, several times
    cheaper than the driver's executemany (bench/log_bench.py)."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return None
    return f"COPY {predictions.name} ({', '.join(column.name for column in predictions.columns)}) FROM STDIN"


class PredictionLog:
    """Group-committing writer of prediction records.

    Measured costs drove its shape: the writer keeps one connection (taking one from the pool per commit
    more than doubled the cost of a one-row commit); rows go to the driver's ``executemany`` as tuples of
    values already in the column's form (SQLAlchemy's per-row parameter processing cost more than the
    insert). A failed commit drops the connection, and the next batch connects afresh."""

    def __init__(self, engine: sa.Engine, max_batch_rows: int = 50_000) -> None:
        self.engine = engine
        self.max_batch_rows = max_batch_rows
        columns = [column.name for column in predictions.columns]
        compiled = predictions.insert().compile(dialect=engine.dialect, column_keys=columns)
        self._insert = str(compiled)
        self._copy = copy_statement(engine)
        # Named parameters of an INSERT: rows become dicts (COPY takes them as they are).
        self._columns = None if compiled.positional or self._copy else columns
        if compiled.positional and list(compiled.positiontup or []) != columns:
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup} in {self._insert}")
        time_type = predictions.c.created_at.type.dialect_impl(engine.dialect)
        self._time_value = time_type.bind_processor(engine.dialect) or (lambda moment: moment)
        self._connection: sa.Connection | None = None
        self._closing = threading.Lock()  # nothing is queued behind the writer's stop
        self._closed = False
        self._queue: queue.Queue[tuple[list[AnsweredRequest], Future[None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def submit(self, answered: AnsweredRequest) -> Future[None]:
        """A future resolved once the rows are committed (or failed with the reason they are not): at once
        with an error after ``close``, when no writer is left to resolve it."""
        return self.submit_all([answered])

    def submit_all(self, answered: list[AnsweredRequest]) -> Future[None]:
        """``submit`` for the rows of several requests, committed together."""
        done: Future[None] = Future()
        with self._closing:
            if self._closed:
                done.set_exception(LogUnavailable("the prediction log is closed (the service is stopping)"))
            else:
                self._queue.put((answered, done))
        return done

    def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        with self._closing:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._commit(batch)
            if stop:
                self._disconnect()
                return

    def _next_batch(self) -> tuple[list[tuple[list[AnsweredRequest], Future[None]]], bool]:
        """What has queued up (waiting for the first item), up to ``max_batch_rows`` rows, and whether the stop
        came after it. A future is marked running as its item is taken, so that it can no longer be cancelled:
        resolving a cancelled future raises, which would end the writer."""
        batch: list[tuple[list[AnsweredRequest], Future[None]]] = []
        rows = 0
        item = self._queue.get()
        while item is not None:
            if item[1].set_running_or_notify_cancel():
                batch.append(item)
                rows += sum(len(answered.ids) for answered in item[0])
            if rows >= self.max_batch_rows:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # the connection may be the broken thing
                self._connection.close()
            self._connection = None

    def _commit(self, batch: list[tuple[list[AnsweredRequest], Future[None]]]) -> None:
        created_at = self._time_value(datetime.now(UTC))
        rows: list[Any] = [row for requests, _ in batch for answered in requests for row in answered.rows(created_at)]
        if self._columns is not None:
            rows = [dict(zip(self._columns, row, strict=True)) for row in rows]
        try:
            self._insert_rows(rows)
        except Exception as err:
            log.error("prediction log: %d request(s) not committed: %s", len(batch), err)
            self._disconnect()
            failure = LogUnavailable.failed(err)
            for _, done in batch:
                done.set_exception(failure)
            return
        for _, done in batch:
            done.set_result(None)

    def _insert_rows(self, rows: list[Any]) -> None:
        kept = self._connection is not None
        if self._connection is None:
            self._connection = self.engine.connect()
        try:
            self._send(self._connection, rows)
        except sa.exc.DBAPIError as err:
            if not (kept and err.connection_invalidated):
                raise
            # The connection kept from an earlier batch was closed while idle (the database restarted, a proxy
            # or a failover dropped it): the insert was not committed, so it goes once more on a new connection.
            self._disconnect()
            self._connection = self.engine.connect()
            self._send(self._connection, rows)
        self._connection.commit()

    def _send(self, connection: sa.Connection, rows: list[Any]) -> None:
        """The rows into the table, in the connection's transaction (not committed)."""
        if self._copy is None:
            connection.exec_driver_sql(self._insert, rows)
            return
        connection.begin()
        dbapi = self.engine.dialect.loaded_dbapi
        try:
            cursor: Any = connection.connection.cursor()  # psycopg's own, which has copy()
            with cursor, cursor.copy(self._copy) as copy:
                for row in rows:
                    copy.write_row(row)
        except dbapi.Error as err:  # as SQLAlchemy reports a driver's error, so that a lost connection is retried
            lost = self.engine.dialect.is_disconnect(err, connection.connection, None)
            raise sa.exc.DBAPIError.instance(
                self._copy, None, err, dbapi.Error, hide_parameters=True, connection_invalidated=lost
            ) from err


def record_feedback(
    engine: sa.Engine, pipeline: str, labels: dict[str, Any], source: str
) -> tuple[list[str], list[str]]:
    """Stores the true label of each known prediction id; returns (stored, unknown) ids."""
    ids = list(labels)
    with engine.begin() as connection:
        known = set(
            connection.scalars(
                sa.select(predictions.c.id).where(predictions.c.id.in_(ids), predictions.c.pipeline == pipeline)
            )
        )
        stored = [i for i in ids if i in known]
        if stored:
            now = datetime.now(UTC)
            connection.execute(
                feedback.insert(),
                [
                    {
                        "prediction_id": i,
                        "pipeline": pipeline,
                        "label": json.dumps(labels[i]),
                        "source": source,
                        "created_at": now,
                    }
                    for i in stored
                ],
            )
    return stored, [i for i in ids if i not in known]


@contextlib.contextmanager
def _reading(url: str) -> Iterator[sa.Connection | None]:
    """A connection to read the log with, or None when the log is a SQLite file not created yet (nothing
    has been logged: every read of it is empty)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        yield None
        return
    engine = create_store_engine(url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def ground_truth(url: str, pipeline: str, key: list[str]) -> list[dict[str, Any]]:
    """The latest true label sent back for each source key of ``pipeline`` (from predictions whose record
    carried every key column): dicts of the key columns plus ``label``. Empty when no log exists yet."""
    query = (
        sa.select(predictions.c.inputs, feedback.c.label)
        .join(feedback, feedback.c.prediction_id == predictions.c.id)
        .where(feedback.c.pipeline == pipeline)
        .order_by(feedback.c.created_at, feedback.c.id)
    )
    if not key:
        return []
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    with _reading(url) as connection:
        if connection is None:
            return []
        for inputs, label in connection.execute(query):
            record = json.loads(inputs)
            if all(record.get(column) is not None for column in key):
                values = tuple(record[column] for column in key)
                latest[values] = {**dict(zip(key, values, strict=True)), "label": json.loads(label)}
    return list(latest.values())


def _answered(pipeline: str, start: datetime, end: datetime) -> Any:
    return (predictions.c.pipeline == pipeline) & (predictions.c.created_at >= start) & (predictions.c.created_at < end)


def answered_versions(url: str, pipeline: str, start: datetime, end: datetime) -> dict[str, int]:
    """How many predictions each model version answered for ``pipeline`` in [start, end) (UTC)."""
    query = (
        sa.select(predictions.c.model_version, sa.func.count())
        .where(_answered(pipeline, start, end))
        .group_by(predictions.c.model_version)
    )
    with _reading(url) as connection:
        return {} if connection is None else {str(v): int(n) for v, n in connection.execute(query)}


ANSWERED_COLUMNS = ("inputs", "prediction", "probability", "label")


def answered_chunks(
    url: str, pipeline: str, start: datetime, end: datetime, rows: int = 100_000
) -> Iterator[dict[str, list[Any]]]:
    """The predictions answered for ``pipeline`` in [start, end) (UTC) in the order they were committed (the
    rows of one commit in the database's order: SQLite's is the order they were written in), each with
    the latest true label sent back for it (None where none was), as chunks of up to ``rows`` rows of columns
    (``ANSWERED_COLUMNS``; inputs, prediction and label stay JSON text).

    Read through the driver's cursor, and the labels looked up by id rather than joined: on 1M rows that
    halves the read (the join and the tie-breaking sort on ids cost more than the rows)."""
    labels = (
        sa.select(feedback.c.prediction_id, feedback.c.label)
        .where(feedback.c.pipeline == pipeline)
        .order_by(feedback.c.id)
    )
    query = (
        sa.select(
            predictions.c.id,
            predictions.c.inputs,
            predictions.c.prediction,
            predictions.c.probability,
        )
        .where(_answered(pipeline, start, end))
        .order_by(predictions.c.created_at)
    )
    with _reading(url) as connection:
        if connection is None:
            return
        latest = dict(connection.execute(labels).cursor.fetchall())  # a later label replaces an earlier one
        # The driver's cursor itself: SQLAlchemy's rows cost more than the fetch. (Not with stream_results,
        # whose result buffers the first rows out of this cursor's reach; on PostgreSQL the driver holds the
        # window's rows until they are fetched, as the columns built here do anyway.)
        cursor = connection.execute(query).cursor
        while found := cursor.fetchmany(rows):
            # One comprehension per column: several times faster than zip(*found) on long chunks.
            columns = {name: [row[place] for row in found] for place, name in enumerate(ANSWERED_COLUMNS[:-1], 1)}
            yield {**columns, "label": [latest.get(row[0]) for row in found]}


def least_sure_unlabeled(url: str, pipeline: str, task: str, limit: int) -> list[dict[str, Any]]:
    """Answered predictions without feedback, the least sure first (binary: probability nearest 0.5;
    multiclass: the lowest probability of the chosen class; regression, which has none: the newest)."""
    order = {
        "binary": sa.func.abs(predictions.c.probability - 0.5),
        "multiclass": predictions.c.probability,
    }.get(task, predictions.c.created_at.desc())
    query = (
        sa.select(
            predictions.c.id,
            predictions.c.created_at,
            predictions.c.model_version,
            predictions.c.inputs,
            predictions.c.prediction,
            predictions.c.probability,
        )
        .outerjoin(feedback, feedback.c.prediction_id == predictions.c.id)
        .where(predictions.c.pipeline == pipeline, feedback.c.id.is_(None))
        .order_by(order, predictions.c.id)
        .limit(limit)
    )
    with _reading(url) as connection:
        rows = [] if connection is None else connection.execute(query).mappings().all()
    return [{**row, "inputs": json.loads(row["inputs"]), "prediction": json.loads(row["prediction"])} for row in rows]
