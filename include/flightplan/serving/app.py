"""The inference API: each pipeline's `champion` behind typed predict endpoints, every answer committed to
the prediction log before it is sent, hot reload when the alias moves, Prometheus metrics.

(No ``from __future__ import annotations`` here: FastAPI reads the request models, built per pipeline at
start-up, from the route functions' annotations at runtime.)"""

import asyncio
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, create_model
from starlette.concurrency import run_in_threadpool

from flightplan.config import PipelineConfig, load_pipeline
from flightplan.layout import Layout
from flightplan.serving.collect import collect
from flightplan.serving.inputs import InvalidRecord, record_model
from flightplan.serving.metrics import ServiceMetrics
from flightplan.serving.models import ModelSlot, ServedModel
from flightplan.serving.store import PredictionLog, PredictionRecord, create_store_engine, record_feedback
from flightplan.settings import Settings

log = logging.getLogger(__name__)
MAX_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class ServiceOptions:
    pipelines: list[str]
    token: str | None  # None: authentication disabled (local use only, asked for explicitly)
    poll_seconds: float = 10.0


class Prediction(BaseModel):
    id: str = Field(description="this prediction's id in the log; send it back with the true label to /feedback")
    prediction: Any
    probability: float | None = Field(description="binary: P(positive); multiclass: P(predicted class)")


class PredictionResponse(Prediction):
    request_id: str
    pipeline: str
    model_version: str


class BatchResponse(BaseModel):
    request_id: str
    pipeline: str
    model_version: str
    predictions: list[Prediction]


class Label(BaseModel):
    id: str
    label: Any


class FeedbackRequest(BaseModel):
    labels: Annotated[list[Label], Field(min_length=1, max_length=MAX_BATCH_ROWS)]


class FeedbackResponse(BaseModel):
    stored: list[str]
    unknown: list[str] = Field(description="ids not in the prediction log of this pipeline (not stored)")


class RawRecords(BaseModel):
    records: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_BATCH_ROWS)]


class Refusal(BaseModel):
    record: int = Field(description="index of the record in the request")
    reason: str


class CollectResponse(BaseModel):
    accepted: int
    refused: list[Refusal]
    file: str | None = Field(description="the landing file the accepted records were written to")


class ReloadResult(BaseModel):
    pipeline: str
    before: str | None
    serving: str | None
    error: str | None


def bearer_auth(token: str | None) -> Callable[..., Awaitable[None]]:
    scheme = HTTPBearer(auto_error=False, description="FLIGHTPLAN_API_TOKEN")

    async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)]) -> None:
        if token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token: send 'Authorization: Bearer <FLIGHTPLAN_API_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


class Service:
    """State shared by the routes: the model slots, the prediction log and the metrics."""

    def __init__(self, settings: Settings, options: ServiceOptions) -> None:
        self.settings = settings
        self.options = options
        self.configs = {name: load_pipeline(name, settings.pipelines_dir) for name in options.pipelines}
        self.slots = {name: ModelSlot(settings, config) for name, config in self.configs.items()}
        self.metrics = ServiceMetrics()
        self.engine = create_store_engine(settings.predictions_db_url)
        self.log: PredictionLog | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        self.log = PredictionLog(self.engine)
        self.reload_all(retry_refused=True)
        self._poller = threading.Thread(target=self._poll, name="alias-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join()
        if self.log:
            self.log.close()
        self.engine.dispose()

    def reload_all(self, retry_refused: bool = False) -> list[dict[str, Any]]:
        results = [slot.refresh(retry_refused) for slot in self.slots.values()]
        for result in results:
            self.metrics.observe_reload(result)
        return results

    def _poll(self) -> None:
        while not self._stop.wait(self.options.poll_seconds):
            self.reload_all()

    def model(self, pipeline: str) -> ServedModel:
        model = self.slots[pipeline].current
        if model is None:
            raise HTTPException(status_code=503, detail=f"pipeline '{pipeline}' has no champion model to serve yet")
        return model

    async def answer(
        self, pipeline: str, records: list[dict[str, Any]], batch: bool
    ) -> tuple[str, ServedModel, list[Prediction]]:
        """Predict, commit every row to the log, then return; a row that cannot be logged is not answered."""
        model = self.model(pipeline)
        started = time.perf_counter()
        try:
            answers = await run_in_threadpool(model.predict, records) if batch else model.predict(records)
        except InvalidRecord as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
        request_id = uuid.uuid4().hex
        ids = [f"{request_id}-{row}" for row in range(len(records))] if batch else [request_id]
        logged = [
            PredictionRecord(i, request_id, pipeline, model.version, record, a.prediction, a.probability)
            for i, record, a in zip(ids, records, answers, strict=True)
        ]
        assert self.log is not None
        try:
            await asyncio.wrap_future(self.log.submit(logged))
        except Exception as err:
            self.metrics.errors.labels(pipeline, "log").inc()
            raise HTTPException(status_code=503, detail=f"prediction not logged, so not answered: {err}") from err
        self.metrics.observe_predictions(pipeline, model.task, answers, time.perf_counter() - started)
        return (
            request_id,
            model,
            [
                Prediction(id=i, prediction=a.prediction, probability=a.probability)
                for i, a in zip(ids, answers, strict=True)
            ],
        )


def create_app(settings: Settings, options: ServiceOptions) -> FastAPI:
    service = Service(settings, options)
    auth = [Depends(bearer_auth(options.token))]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        yield
        await run_in_threadpool(service.stop)

    app = FastAPI(
        title="flightplan inference API",
        description="Predictions of each pipeline's champion model; every answer is logged before it is sent.",
        version="1",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        service.metrics.requests.labels(path, str(response.status_code)).inc()
        service.metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"])
    def ready(response: Response) -> dict[str, Any]:
        """Readiness: every pipeline has a model serving."""
        pipelines = {
            name: {
                "model": slot.config.registered_model,
                "version": slot.current.version if slot.current else None,
                "last_error": slot.last_error,
            }
            for name, slot in service.slots.items()
        }
        ok = all(p["version"] for p in pipelines.values())
        response.status_code = 200 if ok else 503
        return {"ready": ok, "pipelines": pipelines}

    @app.get("/metrics", tags=["service"], response_class=Response)
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.post("/admin/reload", tags=["service"], dependencies=auth, response_model=list[ReloadResult])
    def reload() -> list[dict[str, Any]]:
        """Load now the version each alias points at (the poller does it every few seconds), retrying a
        version refused before."""
        return service.reload_all(retry_refused=True)

    for name, config in service.configs.items():
        add_pipeline_routes(app, service, name, config, auth)
    return app


def add_pipeline_routes(app: FastAPI, service: Service, name: str, config: PipelineConfig, auth: list[Any]) -> None:
    # Built from the pipeline config at start-up, so typed as Any for the checker; FastAPI sees the classes.
    record: Any = record_model(config)
    records: Any = Annotated[list[record], Field(min_length=1, max_length=MAX_BATCH_ROWS)]
    batch_model: Any = create_model(f"{record.__name__}Batch", records=(records, ...))

    async def predict(body: record) -> PredictionResponse:  # type: ignore[valid-type]
        request_id, model, (answer,) = await service.answer(name, [body.model_dump()], batch=False)
        return PredictionResponse(
            request_id=request_id, pipeline=name, model_version=model.version, **answer.model_dump()
        )

    async def predict_batch(body: batch_model) -> BatchResponse:  # type: ignore[valid-type]
        records = [r.model_dump() for r in body.records]
        request_id, model, answers = await service.answer(name, records, batch=True)
        return BatchResponse(request_id=request_id, pipeline=name, model_version=model.version, predictions=answers)

    def feedback(body: FeedbackRequest) -> FeedbackResponse:
        stored, unknown = record_feedback(
            service.engine, name, {label.id: label.label for label in body.labels}, source="api"
        )
        service.metrics.feedback.labels(name).inc(len(stored))
        return FeedbackResponse(stored=stored, unknown=unknown)

    def collect_records(body: RawRecords) -> CollectResponse:
        """Raw source records for the next ingestion run: the good ones are written as a landing file of
        today, the bad ones refused with the reason (the request succeeds even when all are refused: the
        answer says which and why, record by record)."""
        result = collect(Layout(service.settings, config), body.records)
        refused = [Refusal(**refusal) for refusal in result.refused]
        return CollectResponse(accepted=result.accepted, refused=refused, file=result.file)

    routes: list[tuple[str, Callable[..., Any], str]] = [
        ("predict", predict, f"Predict one {name} record"),
        ("predict/batch", predict_batch, f"Predict up to {MAX_BATCH_ROWS:,} records"),
        ("feedback", feedback, "True labels of answered predictions"),
        ("records", collect_records, "Collect raw records for the next ingestion run"),
    ]
    for path, endpoint, summary in routes:
        app.post(f"/v1/{name}/{path}", tags=[f"pipeline {name}"], dependencies=auth, summary=summary)(endpoint)
