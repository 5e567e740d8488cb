"""The durable record of every answered prediction and of the ground truth that arrives later.

SQLAlchemy over SQLite (WAL) by default, PostgreSQL in production (``FLIGHTPLAN_PREDICTIONS_DB``). Writes go
through one writer thread that commits whatever has queued up in one transaction (group commit), so
concurrent requests share a commit; a request is answered only once the future of its rows is resolved,
that is, once they are committed.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
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


@dataclass(frozen=True)
class PredictionRecord:
    id: str
    request_id: str
    pipeline: str
    model_version: str
    inputs: dict[str, Any]
    prediction: Any
    probability: float | None

    def row(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "request_id": self.request_id,
            "pipeline": self.pipeline,
            "model_version": self.model_version,
            "created_at": now,
            "inputs": json.dumps(self.inputs, default=str, separators=(",", ":")),
            "prediction": json.dumps(self.prediction),
            "probability": self.probability,
        }


def create_store_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _durable_wal(connection: Any, _: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # a committed prediction survives a power cut
            cursor.close()

    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine)
    return engine


class PredictionLog:
    """Group-committing writer of prediction records."""

    def __init__(self, engine: sa.Engine, max_batch_rows: int = 50_000) -> None:
        self.engine = engine
        self.max_batch_rows = max_batch_rows
        self._queue: queue.Queue[tuple[list[PredictionRecord], Future[None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def submit(self, records: list[PredictionRecord]) -> Future[None]:
        """A future resolved once ``records`` are committed (or failed with the reason they are not)."""
        done: Future[None] = Future()
        self._queue.put((records, done))
        return done

    def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            rows = len(first[0])
            stop = False
            while rows < self.max_batch_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                rows += len(item[0])
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[list[PredictionRecord], Future[None]]]) -> None:
        now = datetime.now(UTC)
        try:
            with self.engine.begin() as connection:
                connection.execute(predictions.insert(), [r.row(now) for records, _ in batch for r in records])
        except Exception as err:
            log.error("prediction log: %d request(s) not committed: %s", len(batch), err)
            for _, done in batch:
                done.set_exception(err)
            return
        for _, done in batch:
            done.set_result(None)


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
