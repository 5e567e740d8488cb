"""The prediction log's columnar copy: rows sealed into Arrow segments read back exactly as their text does
(every column type, missing values, labels, a window cutting a segment), across a schema change, after a
writer that died with its segment open, and for a log written before segments existed. On SQLite and on
PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pydantic_core
import pytest
import sqlalchemy as sa
from flightplan import prediction_log
from flightplan.prediction_log import (
    LOG_LABEL,
    LOG_PREDICTION,
    LOG_PROBABILITY,
    LOG_TIME,
    ORPHAN_SECONDS,
    AnsweredRequest,
    PredictionLog,
    answered_table,
    answered_versions,
    create_store_engine,
    ground_truth,
    least_sure_unlabeled,
    paired_answers,
    predictions,
    record_feedback,
    segments,
    shadow_answers,
)
from flightplan.slices import SHADOW_LONGEST_WAIT_SECONDS, ShadowClock

from tests.support.engines import postgres_database, postgres_problem, require

PIPELINE = "shop"
SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("count", pa.int64()),
        ("price", pa.float64()),
        ("member", pa.bool_()),
        ("born", pa.date32()),
        ("seen", pa.timestamp("us", tz="UTC")),
    ]
)
WIDER = SCHEMA.append(pa.field("coupon", pa.string()))


def record(row: int) -> dict[str, object]:
    """A record as the service validates it, every third one leaving fields out; odd rows carry a coupon."""
    full = {
        "name": f'n{row} ✈ \t"quoted"',
        "count": row * 1_000_000_007,
        "price": row / 7,
        "member": row % 2 == 0,
        "born": date(1970, 1, 1) + timedelta(days=row),
        "seen": datetime(2013, 1, 1, tzinfo=UTC) + timedelta(microseconds=row * 1_000_001),
        "coupon": f"c{row}",
    }
    return {key: value for key, value in full.items() if row % 3 != 0 or key in ("name", "coupon")}


def answered(request: int, rows: int, fields: list[str]) -> AnsweredRequest:
    records = [{k: v for k, v in record(request * rows + row).items() if k in fields} for row in range(rows)]
    return AnsweredRequest(
        f"q{request}",
        PIPELINE,
        "1",
        [f"q{request}-{row}" for row in range(rows)],
        [pydantic_core.to_json(each).decode() for each in records],
        [json.dumps(row % 2) for row in range(rows)],
        [None if row == 0 else row / 10 for row in range(rows)],
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
        return
    require("PostgreSQL", postgres_problem())
    with postgres_database("segments") as database:
        yield database


def write(url: str, requests: range, schema: pa.Schema | None, rows: int = 5) -> None:
    engine = create_store_engine(url)
    log = PredictionLog(engine, None if schema is None else lambda _pipeline: schema)
    fields = (schema or SCHEMA).names
    log.submit_all([answered(request, rows, fields) for request in requests]).result(timeout=30)
    log.close()
    engine.dispose()


def sealed_rows(url: str) -> list[int | None]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(sa.text("select rows from prediction_segments order by id")).scalars().all()
    engine.dispose()
    return list(found)


def window(url: str, schema: pa.Schema = SCHEMA, start: datetime | None = None) -> pa.Table:
    since = start or datetime.now(UTC) - timedelta(hours=1)
    return answered_table(url, PIPELINE, since, datetime.now(UTC) + timedelta(seconds=1), schema)


def expected(requests: range, schema: pa.Schema, rows: int = 5) -> pa.Table:
    """What the window must hold: the records typed by ``schema``, missing fields None."""
    records = [record(request * rows + row) for request in requests for row in range(rows)]
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in records], schema=schema)


def test_a_sealed_segment_reads_as_its_text_does(url: str) -> None:
    write(url, range(0, 2), schema=None)  # a writer that knows no schema: its rows stay text
    write(url, range(2, 4), schema=SCHEMA)
    assert sealed_rows(url) == [None, 10]
    engine = create_store_engine(url)
    record_feedback(engine, PIPELINE, {"q0-1": 1, "q3-4": 0}, source="test")
    record_feedback(engine, PIPELINE, {"q3-4": 1}, source="test")
    engine.dispose()
    table = window(url)
    assert table.select(SCHEMA.names).equals(expected(range(4), SCHEMA))
    assert table.column(LOG_PREDICTION).to_pylist() == ["0", "1", "0", "1", "0"] * 4
    assert table.column(LOG_PROBABILITY).to_pylist() == [None, 0.1, 0.2, 0.3, 0.4] * 4
    labels = table.column(LOG_LABEL).to_pylist()
    assert labels[1] == "1" and labels[19] == "1" and labels.count(None) == 18


def test_a_window_takes_only_its_own_rows_of_a_segment(url: str) -> None:
    engine = create_store_engine(url)
    log = PredictionLog(engine, lambda _pipeline: SCHEMA)
    log.submit(answered(0, 5, SCHEMA.names)).result(timeout=30)
    cut = datetime.now(UTC)
    log.submit(answered(1, 5, SCHEMA.names)).result(timeout=30)
    log.close()  # one segment for both requests, on either side of the cut
    engine.dispose()
    assert sealed_rows(url) == [10]
    assert window(url, start=cut).select(SCHEMA.names).equals(expected(range(1, 2), SCHEMA))
    assert window(url).num_rows == 10


def test_a_field_added_between_versions_is_none_in_older_segments(url: str) -> None:
    write(url, range(0, 2), schema=SCHEMA)
    write(url, range(2, 4), schema=WIDER)
    table = window(url, WIDER)
    assert table.select(WIDER.names).slice(10).equals(expected(range(2, 4), WIDER))
    assert table.column("coupon").slice(0, 10).null_count == 10
    assert window(url).select(SCHEMA.names).equals(expected(range(4), SCHEMA))  # the older schema reads it all


def test_a_segment_left_open_by_a_dead_writer_is_sealed_by_the_next(url: str) -> None:
    write(url, range(0, 2), schema=None)  # stands for a writer that died: nothing sealed its segment
    before = window(url)
    engine = create_store_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("update prediction_segments set opened_at = :old"),
            {"old": datetime.now(UTC) - timedelta(seconds=ORPHAN_SECONDS + 60)},
        )
    PredictionLog(engine, lambda _pipeline: SCHEMA).close()
    engine.dispose()
    assert sealed_rows(url) == [10]
    assert window(url).equals(before)


def test_a_log_written_before_segments_is_sealed_by_the_first_writer(url: str) -> None:
    """The log as it was before segments existed: no segment column, every row text."""
    engine = sa.create_engine(url)
    legacy = sa.MetaData()
    table = sa.Table(
        "predictions",
        legacy,
        *(
            sa.Column(column.name, column.type, primary_key=column.primary_key, nullable=column.nullable)
            for column in predictions.columns
            if column.name != "segment"
        ),
    )
    legacy.create_all(engine)
    now = datetime.now(UTC) - timedelta(minutes=1)  # logged before the writer below answers
    logged = [answered(request, 5, SCHEMA.names) for request in range(3)]
    with engine.begin() as connection:
        connection.execute(
            table.insert(),
            [
                {
                    "id": each.ids[row],
                    "request_id": each.request_id,
                    "pipeline": PIPELINE,
                    "model_version": "1",
                    "created_at": now + timedelta(milliseconds=5 * request + row),
                    "inputs": each.inputs[row],
                    "prediction": each.predictions[row],
                    "probability": each.probabilities[row],
                }
                for request, each in enumerate(logged)
                for row in range(5)
            ],
        )
    engine.dispose()
    before = window(url)  # its reader adds the segment column, as any process opening the log does
    store = create_store_engine(url)
    log = PredictionLog(store, lambda _pipeline: SCHEMA)
    log.submit(answered(3, 5, SCHEMA.names)).result(timeout=30)
    log.close()
    store.dispose()
    assert sorted(rows or 0 for rows in sealed_rows(url)) == [5, 15]
    after = window(url)
    assert after.slice(0, 15).equals(before) and after.num_rows == 20
    assert after.select(SCHEMA.names).equals(expected(range(4), SCHEMA))
    assert after.column(LOG_TIME).is_valid().to_pylist() == [True] * 20


def test_ground_truth_takes_each_keys_latest_label_from_segments_and_text(url: str) -> None:
    write(url, range(0, 2), schema=None)  # rows of no sealed segment: read as text
    write(url, range(2, 4), schema=SCHEMA)  # sealed
    engine = create_store_engine(url)
    log = PredictionLog(engine)  # the same record as q3-4 answered again, later
    again = AnsweredRequest(
        "again", PIPELINE, "1", ["again-0"], [pydantic_core.to_json(record(19)).decode()], ["1"], [0.5]
    )
    log.submit(again).result(timeout=30)
    log.close()
    record_feedback(engine, PIPELINE, {"q0-1": 1, "q0-3": 1, "q2-1": 0, "q3-4": 0}, source="test")  # q0-3: no count
    record_feedback(engine, PIPELINE, {"again-0": 1}, source="test")
    engine.dispose()

    found = ground_truth(url, PIPELINE, pa.schema([("count", pa.int64())]))

    assert sorted(found, key=lambda row: row["count"]) == [
        {"count": record(1)["count"], "label": 1},
        {"count": record(11)["count"], "label": 0},
        {"count": record(19)["count"], "label": 1},  # the label sent last wins, whichever answer it names
    ]
    assert ground_truth(url, "no such pipeline", pa.schema([("count", pa.int64())])) == []


def answered_as_columns(request: int, rows: int, schema: pa.Schema) -> AnsweredRequest:
    """``answered`` as the service logs a large request: its records as typed columns, no text."""
    records = [{k: v for k, v in record(request * rows + row).items() if k in schema.names} for row in range(rows)]
    text = answered(request, rows, schema.names)
    return dataclasses.replace(text, inputs=[], columns=pa.Table.from_pylist(records, schema=schema))


def test_a_request_logged_as_columns_is_read_as_its_text_would_be(url: str) -> None:
    engine = create_store_engine(url)
    log = PredictionLog(engine, lambda _pipeline: SCHEMA)
    for each in (answered(0, 5, SCHEMA.names), answered_as_columns(1, 5, SCHEMA), answered(2, 5, SCHEMA.names)):
        log.submit(each).result(timeout=30)
    log.close()
    sent = {"q1-4": 1, "q1-0": 0, "q0-1": 1, "q1-5": 1, "q1-04": 1, "q9-0": 1, "q1-x": 1}
    stored, unknown = record_feedback(engine, PIPELINE, sent, source="test")
    assert (sorted(stored), sorted(unknown)) == (["q0-1", "q1-0", "q1-4"], ["q1-04", "q1-5", "q1-x", "q9-0"])
    with engine.connect() as connection:
        assert connection.execute(sa.text("select count(*) from predictions")).scalar_one() == 10

    table = window(url)
    assert table.select(SCHEMA.names).equals(expected(range(0, 3), SCHEMA))
    labels = table.column(LOG_LABEL).to_pylist()
    assert [labels[place] for place in (1, 5, 9)] == ["1", "0", "1"] and labels.count(None) == 12
    assert table.column(LOG_PROBABILITY).to_pylist() == [None, 0.1, 0.2, 0.3, 0.4] * 3
    since = datetime.now(UTC) - timedelta(hours=1)
    assert answered_versions(url, PIPELINE, since, datetime.now(UTC)) == {"1": 15}
    key = pa.schema([("count", pa.int64())])
    assert sorted(row["count"] for row in ground_truth(url, PIPELINE, key)) == [record(1)["count"], record(5)["count"]]
    # q1-1 .. q1-3 come from the request's columns, the others from text; nothing labelled, no probability last.
    unsure = least_sure_unlabeled(url, PIPELINE, "binary", 4)
    assert [row["id"] for row in unsure] == ["q0-4", "q2-4", "q0-3", "q1-3"]
    assert unsure[3]["inputs"] == {k: v for k, v in record(8).items() if k in SCHEMA.names}
    assert (unsure[3]["prediction"], unsure[3]["probability"], unsure[3]["model_version"]) == (1, 0.3, "1")
    engine.dispose()


def test_a_log_whose_segments_predate_requests_as_columns_gets_their_columns(url: str) -> None:
    engine = sa.create_engine(url)
    legacy = sa.MetaData()
    old = [column for column in segments.columns if column.name not in ("request_id", "model_version")]
    sa.Table(segments.name, legacy, *(sa.Column(c.name, c.type, primary_key=c.primary_key) for c in old))
    legacy.create_all(engine)
    engine.dispose()
    write(url, range(0, 1), schema=SCHEMA)
    engine = create_store_engine(url)
    log = PredictionLog(engine, lambda _pipeline: SCHEMA)
    log.submit(answered_as_columns(1, 5, SCHEMA)).result(timeout=30)
    log.close()
    engine.dispose()
    assert window(url).select(SCHEMA.names).equals(expected(range(0, 2), SCHEMA))
    engine = sa.create_engine(url)
    indexes = {index["name"] for index in sa.inspect(engine).get_indexes(segments.name)}
    engine.dispose()
    assert indexes >= {index.name for index in segments.indexes}


@dataclasses.dataclass(frozen=True)
class Served:
    """A service's requests in flight, as a test says they are."""

    quiet: Callable[[], bool]
    untouched: Callable[[], bool] = lambda: True
    clock: ShadowClock = dataclasses.field(default_factory=ShadowClock)


def in_shadow(version: str, ids: list[str]) -> AnsweredRequest:
    """What ``version`` answered in shadow to the served rows ``ids``: 7, with probability 0.7."""
    return AnsweredRequest("", PIPELINE, version, ids, [], ["7"] * len(ids), [0.7] * len(ids))


def test_answers_given_in_shadow_are_committed_in_slices_of_their_budget(url: str) -> None:
    """A served request that comes while they are committed waits for one slice at most: the first slice is one
    row (to time it), the next ones as many rows as half the budget holds at the time per row measured."""
    engine = create_store_engine(url)
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda _connection: commits.append(1))
    timed: list[float] = []
    clock = ShadowClock()
    log = PredictionLog(
        engine, lambda _pipeline: SCHEMA, shadow_slice_timer=timed.append, served=Served(lambda: True, clock=clock)
    )
    assert log.submit_shadow(in_shadow("2", [f"q0-{row}" for row in range(5)]), budget_seconds=1e-9)
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while len(timed) < 5 and datetime.now(UTC) < deadline:
        time.sleep(0.01)
    assert len(commits) == 5 == len(timed)  # a budget no row fits: a row per commit, each slice timed
    assert 0 < sum(timed) <= clock.now()  # each slice's CPU time, which the shadow's clock counted around it
    assert log.submit_shadow(in_shadow("2", [f"q1-{row}" for row in range(5)]), budget_seconds=60)
    log.close()
    assert len(commits) == 6  # all five fit half a minute
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(shadow_answers)).scalar_one() == 10
    engine.dispose()


def test_a_served_request_that_comes_while_shadows_are_committed_waits_for_one_slice_at_most(url: str) -> None:
    """The writer looks for served rows between two shadow slices: served rows queued during a slice's commit
    (the third, held until they are queued) are committed right after that slice, before any other."""
    engine = create_store_engine(url)
    commits: list[str] = []
    written: set[str] = set()
    queued, held = threading.Event(), threading.Event()

    def executed(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        for table in ("shadow_answers", "prediction_segments"):
            if statement.lstrip().upper().startswith("INSERT") and f"INTO {table}" in statement:
                written.add(table)

    def committed(_connection: object) -> None:
        # The first served rows of a pipeline open its segment, in their own transaction.
        kinds = {"shadow_answers": "shadow", "prediction_segments": "served"}
        commits.extend(kinds[table] for table in sorted(written))
        written.clear()
        if commits.count("shadow") == 3 and not held.is_set():
            held.set()
            queued.wait(30)

    sa.event.listen(engine, "before_cursor_execute", executed)
    sa.event.listen(engine, "commit", committed)
    log = PredictionLog(engine, lambda _pipeline: SCHEMA)
    assert log.submit_shadow(in_shadow("2", [f"q0-{row}" for row in range(300)]), budget_seconds=1e-9)
    assert held.wait(30)
    done = log.submit(answered(1, 5, SCHEMA.names))
    queued.set()
    done.result(timeout=30)
    seen = list(commits)
    log.close()
    engine.dispose()
    assert seen[:4] == ["shadow", "shadow", "shadow", "served"], seen


def test_sqlite_checkpoints_its_write_ahead_log_after_commits_not_in_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No commit copies the write-ahead log back into the database (SQLite would, in the commit that fills 1,000
    pages); the writer does once ``CHECKPOINT_PAGES`` wait, and the log starts over from there."""
    database = tmp_path / "log.db"
    engine = create_store_engine(f"sqlite:///{database}")
    log = PredictionLog(engine, lambda _pipeline: SCHEMA)
    wal = Path(f"{database}-wal")

    def frames() -> int:
        return wal.stat().st_size // (4096 + 24)

    monkeypatch.setattr(prediction_log, "SEAL_ROWS", 10**9)  # no seal reading the log meanwhile
    monkeypatch.setattr(prediction_log, "CHECKPOINT_PAGES", 1_000_000)
    requests = itertools.count()
    for _ in range(100):
        if frames() > 1_200:
            break
        log.submit_all([answered(next(requests), 100, SCHEMA.names) for _ in range(10)]).result(timeout=30)
    # Past SQLite's own threshold: had a commit checkpointed there, the log would have started over in its file.
    assert frames() > 1_200
    assert prediction_log.WriteAheadLog(Path(f"{database}-shm")).pages() == frames()
    monkeypatch.setattr(prediction_log, "CHECKPOINT_PAGES", 100)
    for _ in range(2):  # the first is followed by a checkpoint, the second starts the log over
        log.submit(answered(next(requests), 5, SCHEMA.names)).result(timeout=30)
    with contextlib.closing(sqlite3.connect(database)) as reader:  # its own checkpoint: what the writer left
        ((_busy, last_frame, _copied),) = reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    assert 0 < last_frame < 100
    log.close()
    with engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()
    engine.dispose()
    assert count == 100 * (next(requests) - 2) + 2 * 5


def test_answers_given_in_shadow_are_committed_without_waiting_for_the_disk_and_served_ones_with(url: str) -> None:
    """Only the shadow's transactions give up the flush at commit: PostgreSQL's setting is the transaction's own,
    SQLite's is set back to FULL once the shadow's rows are committed, before any served row. Read at each
    commit, in its transaction."""
    engine = create_store_engine(url)
    log = PredictionLog(engine, lambda _pipeline: SCHEMA)
    shadow, flushes = threading.Event(), []
    sqlite = engine.dialect.name == "sqlite"
    setting = "PRAGMA synchronous" if sqlite else "SHOW synchronous_commit"

    def executed(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("INSERT INTO shadow_answers"):
            shadow.set()

    def committed(connection: sa.Connection) -> None:
        driver: Any = connection.connection.driver_connection
        value = driver.execute(setting).fetchone()[0]
        flushes.append(("shadow" if shadow.is_set() else "served", {0: "off", 1: "off", 2: "on"}.get(value, value)))
        shadow.clear()

    sa.event.listen(engine, "before_cursor_execute", executed)
    sa.event.listen(engine, "commit", committed)
    log.submit(answered(0, 5, SCHEMA.names)).result(timeout=30)
    assert log.submit_shadow(in_shadow("2", ["q0-0"]), budget_seconds=60)
    deadline = time.monotonic() + 30
    while log.shadow_rows_waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    log.submit(answered(1, 5, SCHEMA.names)).result(timeout=30)
    seen = list(flushes)
    log.close()
    engine.dispose()
    assert ("shadow", "off") in seen and {kind for kind, flush in seen if flush == "on"} == {"served"}, seen
    assert seen[-1] == ("served", "on"), seen  # set back after the shadow's commit


def test_a_failed_shadow_commit_leaves_the_served_commits_durable(url: str) -> None:
    """A shadow commit that fails inside its transaction (without the flush at commit, on SQLite) must not hand
    its connection on without the flush: the next served rows are committed with it."""
    engine = create_store_engine(url)
    log = PredictionLog(engine, lambda _pipeline: SCHEMA)
    pending, failed, flushes = threading.Event(), threading.Event(), []
    setting = "PRAGMA synchronous" if engine.dialect.name == "sqlite" else "SHOW synchronous_commit"

    def executed(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("INSERT INTO shadow_answers"):
            pending.set()

    def committed(connection: sa.Connection) -> None:
        if pending.is_set() and not failed.is_set():
            failed.set()
            raise RuntimeError("disk I/O error")  # the commit fails, its transaction still open
        driver: Any = connection.connection.driver_connection
        flushes.append({2: "on"}.get(value := driver.execute(setting).fetchone()[0], value))

    sa.event.listen(engine, "before_cursor_execute", executed)
    sa.event.listen(engine, "commit", committed)
    assert log.submit_shadow(in_shadow("2", ["q0-0"]), budget_seconds=60)
    deadline = time.monotonic() + 30
    while (not failed.is_set() or log.shadow_rows_waiting) and time.monotonic() < deadline:
        time.sleep(0.01)
    log.submit(answered(0, 5, SCHEMA.names)).result(timeout=30)
    seen = list(flushes)
    log.close()
    engine.dispose()
    assert failed.is_set() and seen and set(seen) == {"on"}, seen


def test_answers_given_in_shadow_are_committed_a_slice_a_second_while_served_rows_never_stop(url: str) -> None:
    """A log that always has served rows queued (each served commit queues the next, for 3 s) still commits a
    slice of the answers given in shadow once they have waited ``SHADOW_LONGEST_WAIT_SECONDS``: a saturated
    service's challenger gets its live rows, slowly."""
    engine = create_store_engine(url)
    commits: list[tuple[str, float]] = []
    written: set[str] = set()
    shadow_came, stream_ends = threading.Event(), [0.0]

    def executed(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("INSERT") and "INTO shadow_answers" in statement:
            written.add("shadow")

    def committed(_connection: object) -> None:
        kind = "shadow" if written else "served"
        written.clear()
        commits.append((kind, time.monotonic()))
        if kind == "served":
            shadow_came.wait(30)  # the first served commit is held until the shadow's answers are waiting
            if time.monotonic() < stream_ends[0]:
                log.submit(answered(len(commits), 1, SCHEMA.names))

    log = PredictionLog(engine, lambda _pipeline: SCHEMA)
    sa.event.listen(engine, "before_cursor_execute", executed)
    sa.event.listen(engine, "commit", committed)
    stream_ends[0] = time.monotonic() + 3 * SHADOW_LONGEST_WAIT_SECONDS
    first = log.submit(answered(0, 1, SCHEMA.names))
    came = time.monotonic()
    assert log.submit_shadow(in_shadow("2", [f"q0-{row}" for row in range(5)]), budget_seconds=60)
    shadow_came.set()
    first.result(timeout=30)
    time.sleep(3 * SHADOW_LONGEST_WAIT_SECONDS + 0.5)
    seen = list(commits)
    log.close()
    engine.dispose()
    shadows = [moment for kind, moment in seen if kind == "shadow"]
    last_served = max(moment for kind, moment in seen if kind == "served")
    assert shadows and shadows[0] < last_served, seen[-5:]  # committed while served rows kept coming
    assert shadows[0] - came >= SHADOW_LONGEST_WAIT_SECONDS  # after waiting for a free moment that never came
    assert sum(kind == "served" for kind, _ in seen) > 10


def test_answers_given_in_shadow_wait_for_the_service_to_be_quiet(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request in flight has yet to reach the log: a shadow commit then would take CPU from it, so the log
    commits none until the service says it has none in flight and wakes it (here never overdue: a minute)."""
    monkeypatch.setattr(prediction_log, "SHADOW_LONGEST_WAIT_SECONDS", 60.0)
    engine = create_store_engine(url)
    quiet = threading.Event()
    log = PredictionLog(engine, lambda _pipeline: SCHEMA, served=Served(quiet.is_set))

    def shadowed() -> int:
        with engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(shadow_answers)).scalar_one())

    assert log.submit_shadow(in_shadow("2", ["q0-0", "q0-1"]), budget_seconds=60)
    time.sleep(1)
    assert shadowed() == 0  # a request in flight all along
    quiet.set()
    log.wake_for_shadows()  # as the service does when its last request leaves
    deadline = time.monotonic() + 30
    while shadowed() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert shadowed() == 2
    log.close()
    engine.dispose()


def test_overdue_answers_given_in_shadow_wait_for_no_request_in_flight_to_have_seen_shadow_work(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service never quiet, whose requests in flight have shared their time with shadow work: overdue answers
    given in shadow wait (each request sees one slice at most) until those requests have left; served commits
    are not held up meanwhile."""
    monkeypatch.setattr(prediction_log, "SHADOW_LONGEST_WAIT_SECONDS", 0.05)
    engine = create_store_engine(url)
    untouched = threading.Event()
    log = PredictionLog(engine, lambda _pipeline: SCHEMA, served=Served(lambda: False, untouched.is_set))

    def shadowed() -> int:
        with engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(shadow_answers)).scalar_one())

    assert log.submit_shadow(in_shadow("2", ["q0-0", "q0-1"]), budget_seconds=60)
    for request in range(10):  # served rows keep the writer looking, long after the shadow's are overdue
        log.submit(answered(request, 1, SCHEMA.names)).result(timeout=30)
        time.sleep(0.05)
    assert shadowed() == 0
    untouched.set()  # the requests that saw the last slice have left
    request, deadline = 10, time.monotonic() + 30
    while shadowed() < 2 and time.monotonic() < deadline:
        log.submit(answered(request, 1, SCHEMA.names)).result(timeout=30)
        request += 1
        time.sleep(0.05)
    assert shadowed() == 2
    log.close()
    engine.dispose()


def test_paired_answers_pair_each_served_row_with_the_other_versions_shadow_answer(url: str) -> None:
    """Version 1 serves q0 (as text) and q2 (as columns) with 2 in shadow; 2 serves q1 as a canary with 1 in
    shadow; 3 serves q3 with 2 in shadow, which pairs 2 with 3, not with 1."""
    engine = create_store_engine(url)
    log = PredictionLog(engine, lambda _pipeline: SCHEMA)
    canary = dataclasses.replace(answered(1, 5, SCHEMA.names), model_version="2")
    other = dataclasses.replace(answered(3, 5, SCHEMA.names), model_version="3")
    for each in (answered(0, 5, SCHEMA.names), canary, answered_as_columns(2, 5, SCHEMA), other):
        log.submit(each).result(timeout=30)
    for version, request in (("2", 0), ("1", 1), ("2", 2), ("2", 3)):
        assert log.submit_shadow(in_shadow(version, [f"q{request}-{row}" for row in range(5)]), budget_seconds=60)
    log.close()
    record_feedback(engine, PIPELINE, {"q0-1": 0, "q1-2": 1, "q2-3": 0, "q3-0": 1}, source="test")
    record_feedback(engine, PIPELINE, {"q0-1": 1}, source="test")  # the later label wins
    engine.dispose()

    pairs = paired_answers(url, PIPELINE, "2", "1")
    ids = [f"q{request}-{row}" for request in range(3) for row in range(5)]
    assert pairs.column("id").to_pylist() == ids
    assert pairs.column("served").to_pylist() == ["1"] * 5 + ["2"] * 5 + ["1"] * 5
    labels = dict(zip(ids, pairs.column("label").to_pylist(), strict=True))
    assert {i: label for i, label in labels.items() if label is not None} == {"q0-1": "1", "q1-2": "1", "q2-3": "0"}
    served = [json.dumps(row % 2) for row in range(5)]
    served_probability = [None, 0.1, 0.2, 0.3, 0.4]
    assert pairs.column("first_prediction").to_pylist() == ["7"] * 5 + served + ["7"] * 5
    assert pairs.column("first_probability").to_pylist() == [0.7] * 5 + served_probability + [0.7] * 5
    assert pairs.column("second_prediction").to_pylist() == served + ["7"] * 5 + served
    assert pairs.column("second_probability").to_pylist() == served_probability + [0.7] * 5 + served_probability
    assert paired_answers(url, PIPELINE, "2", "3").column("id").to_pylist() == [f"q3-{row}" for row in range(5)]
    assert paired_answers(url, PIPELINE, "1", "3").num_rows == 0
    now = datetime.now(UTC)
    assert paired_answers(url, PIPELINE, "2", "1", since=now - timedelta(minutes=5)).num_rows == 15
    assert paired_answers(url, PIPELINE, "2", "1", since=now + timedelta(seconds=1)).num_rows == 0
