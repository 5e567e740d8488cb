"""The durable record of every answered prediction and of the ground truth that arrives later.

SQLAlchemy over SQLite (WAL) by default, PostgreSQL in production (``FLIGHTPLAN_PREDICTIONS_DB``). Writes go
through one writer thread that commits whatever has queued up in one transaction (group commit), so
concurrent requests share a commit; a request is answered only once the future of its rows is resolved,
that is, once they are committed. A request that stops waiting cancels its future: rows not yet taken by the
writer are then dropped, as the request was not answered.

Rows are logged as text (the inputs as JSON), which is cheap for the small commits of concurrent single-row
requests, and each row names the segment it belongs to. A segment gathers a pipeline's rows for a while
(``SEAL_ROWS`` rows or ``SEAL_SECONDS``); then a second thread seals it: its rows, typed by the pipeline's
record schema, become one Arrow stream stored in the segment. Readers take the sealed segments as columns and
only the rows of no sealed segment as text, so that monitoring reads a day of traffic, and the label step the
labelled answers, without parsing JSON. The text stays the record: a segment is a copy, sealed by the writer
that filled it, or, when that writer is gone (a crash) or the rows predate segments, by the next writer that
starts.

A large request skips the text: its records arrive as typed columns and are stored, with its answers, as a
segment of its own, sealed in the commit that answers it (one row in the database instead of one per answer,
and no JSON to write or parse). Its answers' ids, ``<request_id>-<row>``, are found through the segment's
request id.

A version answering in shadow (a challenger beside the champion, or the champion beside a canary) has its
answers in a table of their own, keyed by the served answer's id and the shadow's version: they share the
served row's inputs and ground truth, and no reader of the served answers sees them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import itertools
import json
import logging
import math
import queue
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from flightplan.config import ColumnType, PipelineConfig
from flightplan.features import input_columns
from flightplan.slices import SHADOW_LONGEST_WAIT_SECONDS, NoServedRequests, ServedRequests, SliceSizer

log = logging.getLogger(__name__)
T = TypeVar("T")

SEAL_ROWS = 20_000  # rows of a segment before it is sealed
SEAL_SECONDS = 600.0  # age of a segment at which it is sealed, even when few rows came
# A seal waits for the writer to be quiet this long (sealing costs the CPU and, on SQLite, the write lock that
# requests need), but no longer than SEAL_DELAY_SECONDS.
QUIET_SECONDS, SEAL_DELAY_SECONDS = 0.25, 300.0
# A segment open this long has no writer left: a live one stops adding to its segments after SEAL_SECONDS. A
# sealer looks for such segments when it starts and then every SEAL_SECONDS.
ORPHAN_SECONDS = 10 * SEAL_SECONDS
SHADOW_COMMITS = "shadow commits"  # the key the writer sizes its slices of answers given in shadow by
# SQLite copies its write-ahead log back into the database (a checkpoint) inside the commit that takes the log past
# 1,000 pages: about 4 ms of CPU at that size, which the commit's callers wait for, and which put a shadow slice
# sized to 1 ms over its budget (docs/performance.md). The writer checkpoints once that many pages wait, between
# its commits, when no served answer waits to be committed, or anyway once twice as many wait.
CHECKPOINT_PAGES = 1000
WAL_INDEX_HEADER_BYTES = 136  # two copies of the index's header, then the checkpoint's (its copied frames at 96)
# The columns a segment holds besides the record's fields (a field name cannot hold a dot).
LOG_ID, LOG_TIME, LOG_VERSION = "log.id", "log.created_at", "log.model_version"
LOG_PREDICTION, LOG_PROBABILITY, LOG_LABEL = "log.prediction", "log.probability", "log.label"
RecordSchemas = Callable[[str], pa.Schema | None]  # a pipeline's record schema, None for one not known here

# How the prediction log's segments type a record's fields (every integer as int64, as JSON gives them).
LOG_TYPES: dict[ColumnType, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "long": pa.int64(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
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
    sa.Column("segment", sa.Integer, nullable=True, index=True),  # None: logged before segments existed
)
segments = sa.Table(
    "prediction_segments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
    # Set when sealed: the time span and number of its rows, and the rows as one Arrow stream.
    sa.Column("first_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("rows", sa.Integer, nullable=True),
    sa.Column("data", sa.LargeBinary, nullable=True),
    # Set for the segment of one large request, written as columns when it is answered and sealed from the
    # start: none of its rows is in the predictions table; their ids are ``<request_id>-<row>``.
    sa.Column("request_id", sa.String(64), nullable=True, index=True),
    sa.Column("model_version", sa.String(32), nullable=True),
    # Windows are read by time: with a segment per large request, the table grows with the requests.
    sa.Index("ix_prediction_segments_pipeline_first_at", "pipeline", "first_at"),
)
# What a version answered in shadow (unseen by the caller) to a request another version served: the served
# answer's id, so that its inputs and ground truth are the served row's.
shadow_answers = sa.Table(
    "shadow_answers",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("prediction", sa.Text, nullable=False),
    sa.Column("probability", sa.Float, nullable=True),
    sa.Index("ix_shadow_answers_pipeline_version", "pipeline", "model_version"),
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
    """The rows one request answered, as they are logged: outputs as JSON text, inputs as JSON text or, for a
    large request, as typed columns (``columns``: its records in the pipeline's record schema, ``inputs`` then
    empty), which are stored as the request's own sealed segment."""

    request_id: str
    pipeline: str
    model_version: str
    ids: list[str]
    inputs: list[str]
    predictions: list[str]
    probabilities: list[float | None]
    columns: pa.Table | None = None

    def shadow_rows(self, created_at: Any) -> list[tuple[Any, ...]]:
        """The rows of answers given in shadow (``submit_shadow``: ``ids`` are the served answers', no inputs), in
        the column order of the shadow_answers table."""
        answers = zip(self.ids, self.predictions, self.probabilities, strict=True)
        return [
            (i, self.model_version, self.pipeline, created_at, prediction, probability)
            for i, prediction, probability in answers
        ]

    def rows(self, created_at: Any, segment: int) -> Iterator[tuple[Any, ...]]:
        """Rows in the column order of the predictions table."""
        for row in zip(self.ids, self.inputs, self.predictions, self.probabilities, strict=True):
            yield (row[0], self.request_id, self.pipeline, self.model_version, created_at, *row[1:], segment)


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
    _add_missing_columns(engine)
    return engine


# Columns newer than the first logs, added to an older log by the first process that opens it.
ADDED_COLUMNS = {
    predictions.name: [("segment", "INTEGER")],
    segments.name: [("request_id", "VARCHAR(64)"), ("model_version", "VARCHAR(32)")],
}


def _add_missing_columns(engine: sa.Engine) -> None:
    """Gives a log created by an older version the columns and indexes it lacks (rows logged before segments
    existed are sealed by the next writer). Each is added on its own: a process stopped in between leaves the
    rest to the next one."""
    inspector = sa.inspect(engine)
    for table in (predictions, segments):
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for name, kind in ADDED_COLUMNS[table.name]:
            if name not in present:
                _apply(engine, partial(_add_column, f"{table.name} ADD COLUMN {name} {kind}"))
        indexed = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexed:
                _apply(engine, partial(index.create, checkfirst=True))


def _add_column(change: str, connection: sa.Connection) -> None:
    connection.execute(sa.text(f"ALTER TABLE {change}"))


def _apply(engine: sa.Engine, change: Callable[[sa.Connection], object]) -> None:
    try:
        with engine.begin() as connection:
            change(connection)
    except sa.exc.DBAPIError:
        # Another process made it first; anything else shows at the first write.
        log.info("prediction log: a column or index was added by another process")


def no_schemas(_pipeline: str) -> None:
    """A writer that knows no pipeline's schema: its segments are left for another to seal."""


@dataclass(frozen=True)
class WriteAheadLog:
    """The write-ahead log of a SQLite database, checkpointed by the prediction log's writer on its own connection
    (``adopt``) rather than by SQLite in a commit."""

    index: Path  # the log's shared-memory index (``-shm``), whose header tells the frames written and copied

    @classmethod
    def of(cls, engine: sa.Engine) -> WriteAheadLog | None:
        """That of the engine's database; None when it has none (PostgreSQL, SQLite in memory)."""
        database = engine.url.database
        if engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return None
        return cls(Path(f"{database}-shm"))

    @staticmethod
    def adopt(connection: sa.Connection) -> None:
        """The connection's commits no longer checkpoint. The log is not truncated as it starts over: the first
        commit after a checkpoint would pay the truncation (about 1 ms of CPU at 1,000 pages)."""
        driver: Any = connection.connection.driver_connection
        driver.execute("PRAGMA wal_autocheckpoint=0")

    def pages(self) -> int:
        """The pages written to the log and not yet copied into the database: the last frame's number less the
        frames copied, read from the index's header (SQLite's documented WAL-index format, in the machine's
        byte order). A read torn by a concurrent commit only moves a checkpoint by one commit."""
        try:
            with self.index.open("rb") as index:
                header = index.read(WAL_INDEX_HEADER_BYTES)
        except FileNotFoundError:
            return 0
        if len(header) < WAL_INDEX_HEADER_BYTES:
            return 0
        (last_frame,), (copied,) = struct.unpack_from("=I", header, 16), struct.unpack_from("=I", header, 96)
        return max(0, last_frame - copied)

    @staticmethod
    def checkpoint(connection: sa.Connection) -> None:
        """Copies what it can into the database without waiting for readers or holding up writers."""
        driver: Any = connection.connection.driver_connection
        driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # read to its end: no statement left open


@dataclass
class OpenSegment:
    id: int
    opened: float  # time.monotonic() of its first commit here
    rows: int = 0


class Sealer:
    """Seals segments in a thread of its own, off the writer's path: those handed to it, and at its start those
    no writer will seal (left open by a writer that is gone, or rows logged before segments existed)."""

    def __init__(self, engine: sa.Engine, schemas: RecordSchemas, busy: Callable[[], bool]) -> None:
        self.engine, self.schemas, self.busy = engine, schemas, busy
        self._closing = threading.Event()
        self._queue: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="prediction-log-sealer", daemon=True)
        self._thread.start()

    def seal(self, segment: int, pipeline: str) -> None:
        self._queue.put((segment, pipeline))

    def close(self) -> None:
        """Seals what was handed over, at once, then stops."""
        self._closing.set()
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        next_sweep = time.monotonic()  # at the start, then every SEAL_SECONDS
        while True:
            if time.monotonic() >= next_sweep:
                self._wait_for_quiet()
                self._guarded(self._seal_left_behind)
                next_sweep = time.monotonic() + SEAL_SECONDS
            try:
                item = self._queue.get(timeout=max(0.0, next_sweep - time.monotonic()))
            except queue.Empty:
                continue
            if item is None:
                return
            self._wait_for_quiet()
            self._guarded(partial(self._seal, *item))

    def _wait_for_quiet(self) -> None:
        deadline = time.monotonic() + SEAL_DELAY_SECONDS
        while self.busy() and time.monotonic() < deadline and not self._closing.wait(QUIET_SECONDS):
            pass

    @staticmethod
    def _guarded(action: Callable[[], object]) -> None:
        """A seal that fails leaves its rows as text, still read as such: logged, not raised."""
        try:
            action()
        except Exception:
            log.exception("prediction log: a segment could not be sealed (its rows stay readable as text)")

    def _seal(self, segment: int, pipeline: str) -> None:
        """Stores the rows of ``segment`` as columns (nothing for a pipeline whose schema is not known here:
        another writer, or a later start, seals it)."""
        schema = self.schemas(pipeline)
        if schema is not None:
            with self.engine.begin() as connection:
                _store_segment(connection, segment, schema)

    def _seal_left_behind(self) -> None:
        cutoff = datetime.now(UTC) - timedelta(seconds=ORPHAN_SECONDS)
        orphans = sa.select(segments.c.id, segments.c.pipeline).where(
            segments.c.data.is_(None), segments.c.opened_at < cutoff
        )
        legacy = sa.select(predictions.c.pipeline).where(predictions.c.segment.is_(None)).distinct()
        with self.engine.connect() as connection:
            left, unsegmented = connection.execute(orphans).all(), connection.scalars(legacy).all()
        for segment, pipeline in left:
            self._guarded(partial(self._seal, segment, pipeline))
        for pipeline in unsegmented:
            self._guarded(partial(seal_unsegmented, self.engine, pipeline, self.schemas(pipeline)))


def seal_unsegmented(engine: sa.Engine, pipeline: str, schema: pa.Schema | None, rows: int = SEAL_ROWS) -> None:
    """Moves the rows of ``pipeline`` logged before segments existed into sealed segments of up to ``rows``, each
    in one transaction with its rows, so that a reader finds each row either as text or in a sealed segment."""
    if schema is None:
        return
    while True:
        with engine.begin() as connection:
            chosen = (
                sa.select(predictions.c.id)
                .where(predictions.c.pipeline == pipeline, predictions.c.segment.is_(None))
                .order_by(predictions.c.created_at)
                .limit(rows)
            )
            segment = open_segment(connection, pipeline, datetime.now(UTC))
            moved = connection.execute(
                sa.update(predictions).where(predictions.c.id.in_(chosen)).values(segment=segment)
            ).rowcount
            _store_segment(connection, segment, schema)
        if moved < rows:
            return


def open_segment(connection: sa.Connection, pipeline: str, now: datetime) -> int:
    """A new segment of ``pipeline``, in the connection's transaction."""
    opened = segments.insert().values(pipeline=pipeline, opened_at=now).returning(segments.c.id)
    return int(connection.execute(opened).scalar_one())


def request_segment(answered: AnsweredRequest, now: datetime) -> dict[str, Any]:
    """The segment of a request logged as columns: its records and answers, sealed from the start."""
    assert answered.columns is not None
    rows = len(answered.ids)
    logged = {
        LOG_ID: pa.array(answered.ids, pa.string()),
        LOG_TIME: pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), rows),
        LOG_VERSION: pa.repeat(pa.scalar(answered.model_version, pa.string()), rows),
        LOG_PREDICTION: pa.array(answered.predictions, pa.string()),
        LOG_PROBABILITY: pa.array(answered.probabilities, pa.float64()),
    }
    table = answered.columns
    for name, values in logged.items():
        table = table.append_column(name, values)
    return {
        "pipeline": answered.pipeline,
        "opened_at": now,
        "first_at": now,
        "last_at": now,
        "rows": rows,
        "data": _arrow_stream(table),
        "request_id": answered.request_id,
        "model_version": answered.model_version,
    }


def _arrow_stream(table: pa.Table) -> bytes:
    """A segment's rows as one Arrow stream, LZ4-compressed (a third of the bytes to write and sync; reading it
    back costs under a microsecond per row)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as stream:
        stream.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _store_segment(connection: sa.Connection, segment: int, schema: pa.Schema) -> None:
    """Seals ``segment`` with its rows (``_arrow_stream``)."""
    query = sa.select(*SEGMENT_SOURCE).where(predictions.c.segment == segment).order_by(predictions.c.created_at)
    found = connection.execute(query).cursor.fetchall()  # the driver's rows: SQLAlchemy's cost more than the seal
    if not found:
        connection.execute(sa.delete(segments).where(segments.c.id == segment))
        return
    table = segment_table(found, schema)
    times = table.column(LOG_TIME)
    sealed = {"first_at": times[0].as_py(), "last_at": times[-1].as_py(), "rows": len(found)}
    connection.execute(
        sa.update(segments)
        .where(segments.c.id == segment, segments.c.data.is_(None))
        .values(**sealed, data=_arrow_stream(table))
    )


# What a segment is made of, in this order.
SEGMENT_SOURCE = (
    predictions.c.id,
    predictions.c.created_at,
    predictions.c.model_version,
    predictions.c.inputs,
    predictions.c.prediction,
    predictions.c.probability,
)


def segment_table(found: Sequence[Any], schema: pa.Schema) -> pa.Table:
    """Logged rows (``SEGMENT_SOURCE``) as one table: the record's fields typed by ``schema``, then the log's
    own columns."""
    columns = [[row[place] for row in found] for place in range(len(SEGMENT_SOURCE))]
    table = parse_records(columns[3], schema)
    logged = {
        LOG_ID: pa.array(columns[0], pa.string()),
        LOG_TIME: _times(columns[1]),
        LOG_VERSION: pa.array(columns[2], pa.string()),
        LOG_PREDICTION: pa.array(columns[4], pa.string()),
        LOG_PROBABILITY: pa.array(columns[5], pa.float64()),
    }
    for name, values in logged.items():
        table = table.append_column(name, values)
    return table


def _times(values: list[Any]) -> pa.Array:
    """The log's times, as the driver's cursor gives them back, as UTC instants: SQLite's are text in UTC, as the
    writer wrote them; PostgreSQL's are times with their zone."""
    utc = pa.timestamp("us", tz="UTC")
    if values and isinstance(values[0], str):
        return pa.array(values, pa.string()).cast(pa.timestamp("us")).cast(utc)
    return pa.array(values, utc)


def parse_records(texts: list[str], schema: pa.Schema) -> pa.Table:
    """Logged records (JSON text, one per row) as the typed columns of ``schema``, in one pass of Arrow's JSON
    reader rather than a ``json.loads`` per row (1M records: seconds instead of tens of seconds).

    Whole numbers are read as floats and then cast, so that a record logged with ``2.0`` for an int field
    still reads (the cast refuses ``2.5``, naming the field; ints are exact up to 2**53). Dates, which the reader
    takes only as numbers, are read as their ISO text and then cast."""
    from pyarrow import json as pa_json

    if not texts:
        return schema.empty_table()
    read_as = pa.schema([f.with_type(_read_type(f.type)) for f in schema])
    options = pa_json.ParseOptions(explicit_schema=read_as, unexpected_field_behavior="ignore")
    table = pa_json.read_json(io.BytesIO("\n".join(texts).encode()), parse_options=options).select(schema.names)
    columns = []
    for field in schema:
        try:
            columns.append(table.column(field.name).cast(field.type))
        except pa.ArrowInvalid:
            raise ValueError(f"logged records: field '{field.name}' holds a value that is not {field.type}") from None
    return pa.Table.from_arrays(columns, schema=schema)


def _read_type(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_integer(kind):
        return pa.float64()
    return pa.string() if pa.types.is_date(kind) else kind


def copy_statement(engine: sa.Engine) -> str | None:
    """The COPY that takes the log's rows on PostgreSQL through psycopg 3 (None elsewhere): per row, several times
    cheaper than the driver's executemany (bench/log_bench.py)."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return None
    return f"COPY {predictions.name} ({', '.join(column.name for column in predictions.columns)}) FROM STDIN"


@dataclass(frozen=True)
class DriverInsert:
    """An INSERT of every column of a table, run by the driver itself: rows come as tuples in the table's column
    order, already in the columns' form, and become dicts only where the driver's parameters are named.
    SQLAlchemy's processing of each row's parameters cost more than the insert (bench/log_bench.py)."""

    statement: str
    names: list[str] | None  # the columns, where the driver's parameters are named

    @classmethod
    def of(cls, table: sa.Table, dialect: sa.Dialect) -> DriverInsert:
        columns = [column.name for column in table.columns]
        compiled = table.insert().compile(dialect=dialect, column_keys=columns)
        if compiled.positional and list(compiled.positiontup or []) != columns:
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup} in {compiled}")
        return cls(str(compiled), None if compiled.positional else columns)

    def run(self, connection: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
        """The rows into the table, in the connection's transaction (not committed)."""
        names = self.names
        connection.exec_driver_sql(
            self.statement, rows if names is None else [dict(zip(names, row, strict=True)) for row in rows]
        )


def sqlite_synchronous(connection: sa.Connection, level: str) -> None:
    """SQLite's flush at commit, set on the driver's connection: outside a transaction (the level cannot change
    inside one), which the driver begins only at the next insert."""
    driver: Any = connection.connection.driver_connection
    driver.execute(f"PRAGMA synchronous={level}")


@dataclass
class WaitingShadows:
    """Rows of answers given in shadow waiting to be committed, from ``start`` on, and the budget they were
    given."""

    rows: list[tuple[Any, ...]]
    budget_seconds: float
    start: int = 0
    came: float = dataclasses.field(default_factory=time.monotonic)


class PredictionLog:
    """Group-committing writer of prediction records.

    Measured costs drove its shape: the writer keeps one connection (taking one from the pool per commit
    more than doubled the cost of a one-row commit); rows go to the driver's ``executemany`` (COPY on
    PostgreSQL) as tuples of values already in the column's form (SQLAlchemy's per-row parameter processing
    cost more than the insert). A failed commit drops the connection, and the next batch connects afresh."""

    def __init__(
        self,
        engine: sa.Engine,
        schemas: RecordSchemas | None = None,
        max_batch_rows: int = 50_000,
        shadow_slice_timer: Callable[[float], None] | None = None,
        served: ServedRequests | None = None,
    ) -> None:
        """``shadow_slice_timer`` is given the CPU time of each slice of shadow answers committed while the log
        serves (those committed at its stop, all at once, are not timed), which ``served.clock`` counts too.
        ``served`` are the service's requests in flight: the slices are committed only while there are none (a
        request on its way to the log would wait for one), or once they are overdue and none in flight has seen
        shadow work yet; the service calls ``wake_for_shadows`` as it goes quiet."""
        self.engine = engine
        self.max_batch_rows = max_batch_rows
        self._insert = DriverInsert.of(predictions, engine.dialect)
        self._shadow_insert = DriverInsert.of(shadow_answers, engine.dialect)
        self._copy = copy_statement(engine)
        # The type of both tables' created_at.
        time_type = predictions.c.created_at.type.dialect_impl(engine.dialect)
        self._time_value = time_type.bind_processor(engine.dialect) or (lambda moment: moment)
        self._connection: sa.Connection | None = None
        self._wal = WriteAheadLog.of(engine)
        self._open: dict[str, OpenSegment] = {}  # by pipeline: the segment its next rows go to
        self._last_commit = 0.0  # time.monotonic() of the last commit
        self._sealer = Sealer(engine, schemas or no_schemas, self._busy)
        self._closing = threading.Lock()  # nothing is queued behind the writer's stop
        self._closed = False
        self._queue: queue.Queue[tuple[list[AnsweredRequest], Future[None]] | None] = queue.Queue()
        self._shadows: collections.deque[WaitingShadows] = collections.deque()  # committed when no request waits
        self._shadow_rows = 0  # their rows, counted as they come: the shadow runner asks before each request
        self._last_shadow_commit = 0.0  # time.monotonic() of the last slice committed
        self._shadow_sizer = SliceSizer()
        self._shadow_slice_timer = shadow_slice_timer or (lambda _seconds: None)
        self._served = served or NoServedRequests()
        self._shadow_clock = self._served.clock
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

    def submit_shadow(self, answered: AnsweredRequest, budget_seconds: float) -> bool:
        """Answers given in shadow, committed in transactions of their own while no served request waits, each
        sized to take half of ``budget_seconds`` (the longest a served request may wait for the shadow): they
        never fail a served answer's commit, and delay it by one slice at most. False when the log is closed
        (they are dropped)."""
        rows = answered.shadow_rows(self._time_value(datetime.now(UTC)))
        with self._closing:
            if self._closed:
                return False
            if not self._shadows:
                self._queue.put(([], Future()))  # wakes the writer, as a request with no rows
            self._shadows.append(WaitingShadows(rows, budget_seconds))
            self._shadow_rows += len(rows)
        return True

    def wake_for_shadows(self) -> None:
        """The service has gone quiet: the writer looks whether answers given in shadow wait to be committed."""
        with self._closing:
            if self._shadows and not self._closed:
                self._queue.put(([], Future()))  # as a request with no rows

    @property
    def shadow_rows_waiting(self) -> int:
        return self._shadow_rows

    def close(self) -> None:
        """Commit what is queued, seal the open segments, then stop the writer."""
        with self._closing:
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        self._sealer.close()

    def _run(self) -> None:
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._commit(batch)
            self._commit_shadows(everything=stop)
            if not stop:  # the engine's last connection checkpoints as it closes
                self._checkpoint_when_due()
            self._hand_over_segments(everything=stop)
            if stop:
                self._disconnect()
                return

    def _busy(self) -> bool:
        return time.monotonic() - self._last_commit < QUIET_SECONDS

    def _hand_over_segments(self, everything: bool) -> None:
        """Segments full or old enough (all of them at the stop) go to the sealer; their pipelines' next rows
        open new ones."""
        now = time.monotonic()
        for pipeline, segment in list(self._open.items()):
            if everything or segment.rows >= SEAL_ROWS or now - segment.opened >= SEAL_SECONDS:
                self._sealer.seal(segment.id, pipeline)
                del self._open[pipeline]

    def _next_batch(self) -> tuple[list[tuple[list[AnsweredRequest], Future[None]]], bool]:
        """What has queued up (waiting for the first item), up to ``max_batch_rows`` rows, and whether the stop
        came after it. A future is marked running as its item is taken, so that it can no longer be cancelled:
        resolving a cancelled future raises, which would end the writer."""
        batch: list[tuple[list[AnsweredRequest], Future[None]]] = []
        rows = 0
        try:
            item = self._queue.get(timeout=SEAL_SECONDS / 4)  # an idle writer still hands over old segments
        except queue.Empty:
            return batch, False
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
        answered = [each for requests, _ in batch for each in requests]
        if not answered:  # only the wake-ups of shadow answers
            for _, done in batch:
                done.set_result(None)
            return
        try:
            opened = self._insert_rows(answered)
        except Exception as err:
            log.error("prediction log: %d request(s) not committed: %s", len(batch), err)
            self._disconnect()
            failure = LogUnavailable.failed(err)
            for _, done in batch:
                done.set_exception(failure)
            return
        self._last_commit = time.monotonic()
        for pipeline, segment in opened.items():
            self._open.setdefault(pipeline, OpenSegment(segment, time.monotonic())).rows += sum(
                len(each.ids) for each in answered if each.pipeline == pipeline and each.columns is None
            )
        for _, done in batch:
            done.set_result(None)

    def _commit_shadows(self, everything: bool = False) -> None:
        """Commits the answers given in shadow a slice at a time, for as long as no served request waits, and one
        slice anyway once they have waited ``SHADOW_LONGEST_WAIT_SECONDS`` and no request in flight has seen shadow
        work; all of them at once when the log stops (no request can come any more). A failed commit drops those
        still waiting too: the database is likely down, and an attempt per slice would only hold up the served
        answers."""
        while True:
            with self._shadow_clock.working(partial(self._may_commit_shadows, everything)) as working:
                started, cpu_started = time.perf_counter(), time.thread_time()
                if not working or not (rows := self._shadow_slice(everything)):
                    return
                try:
                    self._insert_shadow_rows(rows)
                except Exception as err:  # the served answers stand; these are missing from the live comparison
                    self._drop_shadows(len(rows), err)
                    return
                finally:
                    self._last_commit = self._last_shadow_commit = time.monotonic()
                cpu = time.thread_time() - cpu_started
            # Sized by the wall time: a served answer queued meanwhile waits for the whole commit on this thread.
            self._shadow_sizer.measured(SHADOW_COMMITS, len(rows), time.perf_counter() - started)
            if not everything:
                self._shadow_slice_timer(cpu)

    def _drop_shadows(self, failed: int, err: Exception) -> None:
        with self._closing:
            dropped, self._shadows, self._shadow_rows = self._shadow_rows, collections.deque(), 0
        log.error("prediction log: %d answer(s) given in shadow not committed: %s", failed + dropped, err)
        self._disconnect()

    def _may_commit_shadows(self, everything: bool) -> bool:
        """At the stop; while no served answer waits to be committed and no request is in flight; or once the
        oldest have waited too long, if no request in flight has seen shadow work."""
        if everything:
            return True
        if self._queue.empty() and self._served.quiet():
            return True
        return self._shadows_overdue() and self._served.untouched()

    def _shadows_overdue(self) -> bool:
        """Whether the oldest answers given in shadow have waited ``SHADOW_LONGEST_WAIT_SECONDS`` for a moment with no
        served request queued, since they came or since the last slice was committed."""
        with self._closing:
            came = self._shadows[0].came if self._shadows else math.inf
        return time.monotonic() - max(came, self._last_shadow_commit) >= SHADOW_LONGEST_WAIT_SECONDS

    def _shadow_slice(self, everything: bool) -> list[tuple[Any, ...]]:
        """The next rows given in shadow, as many as half the smallest budget among them holds (all of them with
        ``everything``; none when none wait)."""
        taken: list[tuple[Any, ...]] = []
        budget = math.inf
        with self._closing:
            while self._shadows:
                waiting = self._shadows[0]
                budget = min(budget, waiting.budget_seconds)
                fits = self._shadow_rows if everything else self._shadow_sizer.rows(SHADOW_COMMITS, budget)
                if len(taken) >= fits:
                    break
                part = waiting.rows[waiting.start : waiting.start + fits - len(taken)]
                taken += part
                waiting.start += len(part)
                if waiting.start == len(waiting.rows):
                    self._shadows.popleft()
            self._shadow_rows -= len(taken)
        return taken

    def _insert_rows(self, answered: list[AnsweredRequest]) -> dict[str, int]:
        """Commits the rows; returns the segment of each pipeline they went to."""
        return self._committed(lambda connection: self._write(connection, answered))

    def _insert_shadow_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """The rows committed without waiting for the disk: no caller holds these answers, and a power cut that lost
        the last ones would cost the live comparison a few rows, while a durable commit costs a served request that
        arrives meanwhile the disk's flush (most of the shadow's slices over its budget, docs/performance.md). The
        served rows keep their durable commits: PostgreSQL's setting lasts the transaction, SQLite's (which cannot
        change inside one) is set back after the commit."""
        dialect = self.engine.dialect.name

        def write(connection: sa.Connection) -> None:
            if dialect == "postgresql":
                connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            elif dialect == "sqlite":
                sqlite_synchronous(connection, "NORMAL")  # in WAL mode: no flush at each commit
            self._shadow_insert.run(connection, rows)

        try:
            self._committed(write)
        finally:
            if dialect == "sqlite" and self._connection is not None:
                self._durable_again(self._connection)

    def _durable_again(self, connection: sa.Connection) -> None:
        """SQLite's flush at commit back for the served rows, even after a failed shadow commit; a connection on
        which it cannot be set back (a transaction left open) is thrown away, never returned to the pool."""
        try:
            sqlite_synchronous(connection, "FULL")
        except Exception:
            connection.invalidate()
            self._connection = None

    def _committed(self, write: Callable[[sa.Connection], T]) -> T:
        """``write`` on the writer's connection, committed; what it returns."""
        kept = self._connection is not None
        if self._connection is None:
            self._connection = self._connect()
        try:
            written = write(self._connection)
        except sa.exc.DBAPIError as err:
            if not (kept and err.connection_invalidated):
                raise
            # The connection kept from an earlier batch was closed while idle (the database restarted, a proxy
            # or a failover dropped it): nothing was committed, so the write goes once more on a new connection.
            self._disconnect()
            self._connection = self._connect()
            written = write(self._connection)
        self._connection.commit()
        return written

    def _connect(self) -> sa.Connection:
        connection = self.engine.connect()
        if self._wal is not None:
            self._wal.adopt(connection)
        return connection

    def _checkpoint_when_due(self) -> None:
        """SQLite's write-ahead log copied into the database once ``CHECKPOINT_PAGES`` wait, after the commits
        that filled it (their callers have their answers) and while no served answer waits to be committed, or
        anyway once twice as many wait (a log never idle still gets its checkpoints). A failed checkpoint is tried
        again after the next commit, on a new connection."""
        if self._wal is None or self._connection is None:
            return
        pages = self._wal.pages()
        if pages < CHECKPOINT_PAGES or (not self._queue.empty() and pages < 2 * CHECKPOINT_PAGES):
            return
        try:
            self._wal.checkpoint(self._connection)
        except Exception as err:
            log.warning("prediction log: the write-ahead log could not be checkpointed: %s", err)
            self._disconnect()

    def _write(self, connection: sa.Connection, answered: list[AnsweredRequest]) -> dict[str, int]:
        """The rows into the table in the connection's transaction, a pipeline without an open segment opening
        one in the same transaction (so that a failed commit leaves no segment behind); the requests logged as
        columns as their own segments, in the same transaction."""
        now = datetime.now(UTC)
        as_text = [each for each in answered if each.columns is None]
        opened = {each.pipeline: self._open[each.pipeline].id for each in as_text if each.pipeline in self._open}
        for pipeline in {each.pipeline for each in as_text} - opened.keys():
            opened[pipeline] = open_segment(connection, pipeline, now)
        created_at = self._time_value(now)
        rows = [row for each in as_text for row in each.rows(created_at, opened[each.pipeline])]
        whole = [request_segment(each, now) for each in answered if each.columns is not None]  # before any lock
        if rows:
            self._send(connection, rows)
        if whole:
            connection.execute(segments.insert(), whole)
        return opened

    def _send(self, connection: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
        """The rows into the table, in the connection's transaction (not committed)."""
        if self._copy is None:
            self._insert.run(connection, rows)
            return
        if not connection.in_transaction():
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
        known |= _rows_of_requests(connection, pipeline, [i for i in ids if i not in known])
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


def _rows_of_requests(connection: sa.Connection, pipeline: str, ids: list[str]) -> set[str]:
    """Those of ``ids`` that name a row of a request of ``pipeline`` logged as columns (``<request_id>-<row>``)."""
    wanted: dict[str, list[tuple[str, int]]] = {}
    for each in ids:
        request, _, row = each.rpartition("-")
        if row.isascii() and row.isdigit() and str(int(row)) == row:
            wanted.setdefault(request, []).append((each, int(row)))
    found: set[str] = set()
    for chunk in _chunks(list(wanted)):
        query = sa.select(segments.c.request_id, segments.c.rows).where(
            segments.c.pipeline == pipeline, segments.c.request_id.in_(chunk)
        )
        for request, rows in connection.execute(query):
            found |= {each for each, row in wanted[request] if row < rows}
    return found


def _chunks(values: list[str], size: int = 500) -> Iterator[list[str]]:
    """``values`` in lists of at most ``size``: the bound parameters of one IN stay far below SQLite's limit."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


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


def record_schema(config: PipelineConfig) -> pa.Schema:
    """The fields a record may carry as the log keeps them in columns: the request's raw fields, then the source
    key's columns."""
    names = dict.fromkeys([*input_columns(config), *config.source.key])
    return pa.schema([(name, LOG_TYPES[config.column(name).type]) for name in names])


def key_schema(config: PipelineConfig) -> pa.Schema:
    """The source key's columns as the log keeps them (what ``ground_truth`` matches labels by)."""
    schema = record_schema(config)
    return pa.schema([schema.field(name) for name in config.source.key])


def ground_truth(url: str, pipeline: str, key: pa.Schema) -> list[dict[str, Any]]:
    """The latest true label sent back for each source key of ``pipeline`` (``key``: its columns as the log
    types them), from predictions whose record carried every key column: dicts of the key columns plus
    ``label``. The key columns are read from the labelled rows' sealed segments, and from text only for rows of
    no sealed segment. Empty when no log exists yet."""
    sent = (
        sa.select(feedback.c.prediction_id, feedback.c.label)
        .where(feedback.c.pipeline == pipeline)
        .order_by(feedback.c.created_at, feedback.c.id)
    )
    with _reading(url) as connection:
        if connection is None or not key.names:
            return []
        labels = connection.execute(sent).all()
        wanted = pa.array([prediction for prediction, _ in labels], pa.string())
        rows = _labelled_rows(connection, pipeline, key, wanted).drop_null()  # a record without its whole key
    place = {prediction: at for at, (prediction, _) in enumerate(labels)}  # an answer's latest label wins
    latest: dict[tuple[Any, ...], int] = {}
    for row in sorted(rows.to_pylist(), key=lambda row: place[row[LOG_ID]]):
        latest[tuple(row[name] for name in key.names)] = place[row[LOG_ID]]
    return [
        {**dict(zip(key.names, values, strict=True)), "label": json.loads(labels[at][1])}
        for values, at in latest.items()
    ]


def _labelled_rows(connection: sa.Connection, pipeline: str, key: pa.Schema, wanted: pa.Array) -> pa.Table:
    """The id and ``key`` columns of the answers of ``pipeline`` whose ids are ``wanted`` (those that got a label):
    first those of no sealed segment, from their text; then the others from their segments. A segment sealed
    between the two reads is read in the first and skipped in the second (a seal is never undone), so no row is
    lost or read twice."""
    labelled = sa.select(feedback.c.prediction_id).where(feedback.c.pipeline == pipeline)
    as_text = (
        sa.select(*SEGMENT_SOURCE)
        .select_from(predictions.outerjoin(segments, segments.c.id == predictions.c.segment))
        .where(predictions.c.id.in_(labelled), segments.c.data.is_(None))
    )
    columns = [LOG_ID, *key.names]
    text = segment_table(connection.execute(as_text).all(), key)
    read = [text.filter(pc.is_in(text.column(LOG_ID), value_set=wanted)).select(columns)]  # not a label sent since
    done = text.column(LOG_ID).combine_chunks()
    their_segments = sa.select(predictions.c.segment).where(predictions.c.id.in_(labelled)).distinct()
    sealed = [sa.select(segments.c.data).where(segments.c.id.in_(their_segments), segments.c.data.is_not(None))]
    # Labels of rows that are no row of the table: those of requests logged as columns.
    elsewhere = labelled.where(~sa.exists().where(predictions.c.id == feedback.c.prediction_id))
    requests = sorted({each.rpartition("-")[0] for each in connection.scalars(elsewhere)})
    sealed += [
        sa.select(segments.c.data).where(segments.c.pipeline == pipeline, segments.c.request_id.in_(chunk))
        for chunk in _chunks(requests)
    ]
    for data in (data for statement in sealed for data in connection.scalars(statement)):
        table = _conformed(pa.ipc.open_stream(data).read_all(), key)
        ids = table.column(LOG_ID)
        keep = pc.and_(pc.is_in(ids, value_set=wanted), pc.invert(pc.is_in(ids, value_set=done)))
        read.append(table.filter(keep).select(columns))
    return pa.concat_tables(read)


def _answered(pipeline: str, start: datetime, end: datetime) -> Any:
    return (predictions.c.pipeline == pipeline) & (predictions.c.created_at >= start) & (predictions.c.created_at < end)


def answered_versions(url: str, pipeline: str, start: datetime, end: datetime) -> dict[str, int]:
    """How many predictions each model version answered for ``pipeline`` in [start, end) (UTC)."""
    as_rows = (
        sa.select(predictions.c.model_version, sa.func.count())
        .where(_answered(pipeline, start, end))
        .group_by(predictions.c.model_version)
    )
    as_columns = (
        sa.select(segments.c.model_version, sa.func.sum(segments.c.rows))
        .where(segments.c.pipeline == pipeline, segments.c.request_id.is_not(None))
        .where(segments.c.first_at >= start, segments.c.first_at < end)
        .group_by(segments.c.model_version)
    )
    counts: Counter[str] = Counter()
    with _reading(url) as connection:
        if connection is not None:
            for statement in (as_rows, as_columns):
                counts.update({str(version): int(rows) for version, rows in connection.execute(statement)})
    return dict(counts)


def answered_table(url: str, pipeline: str, start: datetime, end: datetime, schema: pa.Schema) -> pa.Table:
    """The predictions answered for ``pipeline`` in [start, end) (UTC) in the order they were committed: the
    record's fields typed by ``schema`` (None where a record left one out), then ``LOG_TIME``, ``LOG_VERSION``,
    ``LOG_PREDICTION`` (JSON text), ``LOG_PROBABILITY`` and ``LOG_LABEL``: the latest true label sent back for it
    (JSON text, None where none was). Sealed segments are read as they are; only rows of no sealed segment are
    parsed. The labels are read apart and matched by id in one vectorized lookup: on 1M rows, a join and its sort
    cost more than the rows, and a dictionary lookup per row a second."""
    labels = (
        sa.select(feedback.c.prediction_id, feedback.c.label)
        .where(feedback.c.pipeline == pipeline)
        .order_by(feedback.c.id)
    )
    tables, latest = [], {}
    with _reading(url) as connection:
        if connection is not None:
            tables = list(_answered_tables(connection, pipeline, start, end, schema))
            latest = dict(connection.execute(labels).cursor.fetchall())  # a later label replaces an earlier one
    table = pa.concat_tables(tables) if tables else _conformed(segment_table([], schema), schema)
    times = table.column(LOG_TIME).combine_chunks()
    if len(times) > 1 and not pc.all(pc.less_equal(times[:-1], times[1:])).as_py():
        table = table.sort_by(LOG_TIME)
    found = pc.index_in(table.column(LOG_ID), value_set=pa.array(list(latest), pa.string()))
    labelled = pa.array(list(latest.values()), pa.string()).take(found)
    return table.drop_columns([LOG_ID]).append_column(LOG_LABEL, labelled)


def _answered_tables(
    connection: sa.Connection, pipeline: str, start: datetime, end: datetime, schema: pa.Schema, rows: int = 100_000
) -> Iterator[pa.Table]:
    """The sealed segments' rows in the window, in time order (the segments of one schema filtered and typed
    together: a large request's is small), then those of no segment read so far in chunks of ``rows``, through
    the driver's cursor. The second read is one statement, so one snapshot: a segment sealed in between (by its
    writer, or with the rows of a log older than segments) is read there, as text, once. A request's own
    segment has no text to read."""
    sealed_query = (
        sa.select(segments.c.id, segments.c.request_id, segments.c.data)
        .where(segments.c.pipeline == pipeline, segments.c.data.is_not(None))
        .where(segments.c.first_at < end, segments.c.last_at >= start)
        .order_by(segments.c.first_at)
    )
    sealed, decoded = [], []
    for segment, request, data in connection.execute(sealed_query):
        if request is None:
            sealed.append(segment)
        decoded.append(pa.ipc.open_stream(data).read_all())
    for _, same_schema in itertools.groupby(decoded, key=lambda table: table.schema):
        table = pa.concat_tables(list(same_schema))
        times = table.column(LOG_TIME)
        yield _conformed(table.filter(pc.and_(pc.greater_equal(times, start), pc.less(times, end))), schema)
    unread = sa.select(segments.c.id).where(
        segments.c.pipeline == pipeline,
        segments.c.request_id.is_(None),
        segments.c.id.not_in(sealed),
        sa.or_(segments.c.data.is_(None), (segments.c.first_at < end) & (segments.c.last_at >= start)),
    )
    window = _answered(pipeline, start, end)
    # Two selects that each use the segment index, rather than one test of every row of the window.
    text = sa.union_all(
        sa.select(*SEGMENT_SOURCE).where(window, predictions.c.segment.in_(unread)),
        sa.select(*SEGMENT_SOURCE).where(window, predictions.c.segment.is_(None)),
    )
    cursor = connection.execute(text).cursor
    while found := cursor.fetchmany(rows):
        yield _conformed(segment_table(found, schema), schema)


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A segment's table in the reader's schema (a field added since it was sealed is None throughout; one whose
    type changed is cast), then its log columns."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        try:
            columns.append(table.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ValueError(f"logged records: field '{field.name}' does not read as {field.type}") from None
    logged = [LOG_ID, LOG_TIME, LOG_VERSION, LOG_PREDICTION, LOG_PROBABILITY]
    return pa.Table.from_arrays([*columns, *(table.column(name) for name in logged)], names=[*schema.names, *logged])


# What ``paired_answers`` gives: per row, each version's answer (JSON text) and probability.
PAIRED_SCHEMA = pa.schema(
    [("id", pa.string()), ("served", pa.string()), ("label", pa.string()),
     ("first_prediction", pa.string()), ("first_probability", pa.float64()),
     ("second_prediction", pa.string()), ("second_probability", pa.float64())]
)  # fmt: skip


def paired_answers(url: str, pipeline: str, first: str, second: str, since: datetime | None = None) -> pa.Table:
    """The rows of ``pipeline`` that versions ``first`` and ``second`` both answered, one serving the caller and
    the other in shadow (a shadow or canary share), in id order: the row's id, the version that ``served`` it,
    the latest true label sent back for it (JSON text, None where none was), then each version's answer (JSON
    text) and probability. With ``since``, only rows answered in shadow from then on. Empty when no log exists
    yet."""
    pair = [first, second]
    in_shadow = (shadow_answers.c.pipeline == pipeline) & shadow_answers.c.model_version.in_(pair)
    if since is not None:
        in_shadow &= shadow_answers.c.created_at >= since
    shadowed = sa.select(
        shadow_answers.c.id, shadow_answers.c.model_version, shadow_answers.c.prediction, shadow_answers.c.probability
    ).where(in_shadow)
    served = (
        sa.select(predictions.c.id, predictions.c.model_version, predictions.c.prediction, predictions.c.probability)
        .join(shadow_answers, shadow_answers.c.id == predictions.c.id)
        .where(in_shadow)
        .where(predictions.c.model_version.in_(pair), predictions.c.model_version != shadow_answers.c.model_version)
    )
    labels = (
        sa.select(feedback.c.prediction_id, feedback.c.label)
        .join(shadow_answers, shadow_answers.c.id == feedback.c.prediction_id)
        .where(feedback.c.pipeline == pipeline, in_shadow)
        .order_by(feedback.c.id)
    )
    answer = ["id", "version", "prediction", "probability"]
    with _reading(url) as connection:
        if connection is None:
            return PAIRED_SCHEMA.empty_table()
        shadow = _answer_table(connection.execute(shadowed).all(), answer)
        in_table = _answer_table(connection.execute(served).all(), answer)
        in_segments = _served_in_segments(connection, pipeline, shadow.column("id"), in_table.column("id"), answer)
        latest = dict(connection.execute(labels).all())  # a later label replaces an earlier one
    return _paired(pa.concat_tables([in_table, in_segments]), shadow, first, second, latest)


def _paired(served: pa.Table, shadow: pa.Table, first: str, second: str, latest: dict[str, str]) -> pa.Table:
    """Each served answer of ``first`` or ``second`` beside the other's answer in shadow, as ``paired_answers``
    gives them, with its latest label from ``latest`` (id: label)."""
    both = served.join(shadow, "id", right_suffix="_shadow")
    pair = pa.array([first, second])
    both = both.filter(pc.and_(pc.is_in(both["version"], pair), pc.not_equal(both["version"], both["version_shadow"])))
    both = both.sort_by("id")
    served_first = pc.equal(both["version"], first)
    found = pc.index_in(both["id"], value_set=pa.array(list(latest), pa.string()))
    return pa.table(
        [
            both["id"],
            both["version"],
            pa.array(list(latest.values()), pa.string()).take(found),
            pc.if_else(served_first, both["prediction"], both["prediction_shadow"]),
            pc.if_else(served_first, both["probability"], both["probability_shadow"]),
            pc.if_else(served_first, both["prediction_shadow"], both["prediction"]),
            pc.if_else(served_first, both["probability_shadow"], both["probability"]),
        ],
        schema=PAIRED_SCHEMA,
    )


def _answer_table(rows: Sequence[Any], names: list[str]) -> pa.Table:
    """Answers read from the log (id, version, prediction, probability) as a table."""
    kinds = [pa.string(), pa.string(), pa.string(), pa.float64()]
    return pa.table([pa.array([row[i] for row in rows], kind) for i, kind in enumerate(kinds)], names=names)


def _served_in_segments(
    connection: sa.Connection, pipeline: str, shadowed: pa.ChunkedArray, in_table: pa.ChunkedArray, names: list[str]
) -> pa.Table:
    """The served answers of the ``shadowed`` ids that are no row of the table (``in_table``: those that are):
    rows of requests logged as columns, read from their segments."""
    elsewhere = pc.filter(shadowed, pc.invert(pc.is_in(shadowed, value_set=in_table.combine_chunks()))).to_pylist()
    requests = sorted({each.rpartition("-")[0] for each in elsewhere})
    found = [_answer_table([], names)]
    for chunk in _chunks(requests):
        query = sa.select(segments.c.data).where(segments.c.pipeline == pipeline, segments.c.request_id.in_(chunk))
        for data in connection.scalars(query):
            table = pa.ipc.open_stream(data).read_all().select([LOG_ID, LOG_VERSION, LOG_PREDICTION, LOG_PROBABILITY])
            table = table.rename_columns(names)
            found.append(table.filter(pc.is_in(table["id"], value_set=pa.array(elsewhere, pa.string()))))
    return pa.concat_tables(found)


def least_sure_unlabeled(url: str, pipeline: str, task: str, limit: int) -> list[dict[str, Any]]:
    """Answered predictions without feedback, the least sure first (binary: probability nearest 0.5;
    multiclass: the lowest probability of the chosen class; regression, which has none: the newest): the
    ``limit`` first of the table's rows, and of each request logged as columns."""
    order = {
        "binary": sa.func.abs(predictions.c.probability - 0.5),
        "multiclass": predictions.c.probability,
    }.get(task, predictions.c.created_at.desc())
    query = (
        sa.select(*SEGMENT_SOURCE)
        .outerjoin(feedback, feedback.c.prediction_id == predictions.c.id)
        .where(predictions.c.pipeline == pipeline, feedback.c.id.is_(None))
        .order_by(sa.nullslast(order), predictions.c.id)
        .limit(limit)
    )
    whole = sa.select(segments.c.data).where(segments.c.pipeline == pipeline, segments.c.request_id.is_not(None))
    labelled = sa.select(feedback.c.prediction_id).where(feedback.c.pipeline == pipeline)
    with _reading(url) as connection:
        if connection is None:
            return []
        found = [
            {**row, "created_at": _as_utc(row["created_at"]), "inputs": json.loads(row["inputs"])}
            for row in connection.execute(query).mappings()
        ]
        sent = pa.array(connection.scalars(labelled).all(), pa.string())
        for data in connection.scalars(whole):
            found += _least_sure_of(pa.ipc.open_stream(data).read_all(), sent, task, limit)
    found.sort(key=partial(_unsureness, task))
    return [{**row, "prediction": json.loads(row["prediction"])} for row in found[:limit]]


def _least_sure_of(table: pa.Table, labelled: pa.Array, task: str, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` least sure rows of a request's segment that have no label, as ``least_sure_unlabeled`` gives
    them (inputs without their missing fields)."""
    table = table.filter(pc.invert(pc.is_in(table.column(LOG_ID), value_set=labelled)))
    probability = table.column(LOG_PROBABILITY)
    sureness = {"binary": pc.abs(pc.subtract(probability, 0.5)), "multiclass": probability}.get(task)
    if sureness is not None:
        table = table.take(pc.sort_indices(pa.table({"s": sureness}), sort_keys=[("s", "ascending")])[:limit])
    logged = {LOG_ID: "id", LOG_TIME: "created_at", LOG_VERSION: "model_version", LOG_PREDICTION: "prediction"}
    return [
        {
            **{to: row[name] for name, to in logged.items()},
            "probability": row[LOG_PROBABILITY],
            "inputs": {name: value for name, value in row.items() if value is not None and not name.startswith("log.")},
        }
        for row in table.slice(0, limit).to_pylist()
    ]


def _unsureness(task: str, row: dict[str, Any]) -> tuple[float, str]:
    """The order of ``least_sure_unlabeled``: the least sure first, then by id."""
    probability = row["probability"]
    if task in ("binary", "multiclass"):
        if probability is None:
            return math.inf, row["id"]
        return (abs(probability - 0.5) if task == "binary" else probability), row["id"]
    return -row["created_at"].timestamp(), row["id"]


def _as_utc(moment: datetime) -> datetime:
    """A time read back from the log as an instant in UTC (SQLite gives back the UTC time without its zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
