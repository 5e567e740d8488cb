"""The inference API: each pipeline's `champion` behind typed predict endpoints, every answer committed to
the prediction log before it is sent, hot reload when the alias moves, Prometheus metrics.

(No ``from __future__ import annotations`` here: FastAPI reads the request models, built per pipeline at
start-up, from the route functions' annotations at runtime.)"""

import asyncio
import gc
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import pydantic_core
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_swagger import patch_fastapi
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flightplan.config import PipelineConfig, load_pipeline, scan_pipelines
from flightplan.features import label_problem
from flightplan.layout import Layout
from flightplan.model.registry import CHALLENGER, CHAMPION
from flightplan.prediction_log import (
    AnsweredRequest,
    LogUnavailable,
    PredictionLog,
    create_store_engine,
    record_feedback,
    record_schema,
)
from flightplan.serving.batching import TurnBatcher
from flightplan.serving.collect import SnapshotSource, collect
from flightplan.serving.formats import (
    ColumnTypes,
    InvalidInvocation,
    invocation_schema,
    read_csv_invocation,
    read_invocation,
)
from flightplan.serving.inputs import InvalidRecord, python_type, record_type
from flightplan.serving.metrics import ServiceMetrics
from flightplan.serving.models import (
    Answer,
    ModelSlot,
    ModelSources,
    RegistryModels,
    ServedModel,
    answer_texts,
    answers_each,
)
from flightplan.serving.traffic import (
    Challenger,
    InFlight,
    Route,
    RouteKey,
    Routing,
    ShadowJob,
    ShadowRunner,
    challenger_of,
)
from flightplan.settings import TOKEN_VARIABLES, ApiScope, Settings
from flightplan.slices import ShadowClock

log = logging.getLogger(__name__)
MAX_BATCH_ROWS = 10_000
# A request body is read whole before it is parsed: beyond this size it is refused (413) as it streams in, so a
# huge body cannot take the process's memory. The largest batch takes about 5 MB, pretty-printed twice that.
MAX_BODY_BYTES = 32 << 20
# How long a request waits for its rows to commit before it is refused: a log out of reach that does not fail
# (a network dropping packets, a database that hangs) must not hold clients and their connections without end.
# Far above a commit's usual milliseconds, below the 30 s clients and proxies commonly give a request.
LOG_WAIT_SECONDS = 10.0
# Requests of this many rows or more are logged as typed columns, as a segment of their own: about half the cost
# per row of a row of JSON text each, with no sealing after (bench/log_bench.py).
COLUMNAR_ROWS = 100
ANY_VERSION = Routing()  # a request that asks nothing of the routing
# The pipelines' routes (predictions, feedback): the requests the shadow waits for.
API_PREFIX = "/v1/"


@dataclass(frozen=True)
class ServiceOptions:
    pipelines: list[str] | None  # None: every pipeline of the folder, followed as YAMLs come, change and go
    # The bearer token of each scope; a scope without one is closed. None: authentication disabled (local use only,
    # asked for explicitly).
    tokens: Mapping[ApiScope, str] | None
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


class InvocationResponse(BaseModel):
    """MLflow's answer (``predictions``, one per row, in the rows' order) and what the typed routes add."""

    predictions: list[Any]
    probabilities: list[float | None]
    ids: list[str]  # the id of each row's answer, for its feedback
    request_id: str
    pipeline: str
    model_version: str


# What the OpenAPI document says a true label of each task is; features.label_problem decides, also for
# what a schema cannot say (a multiclass model's classes, known once a version serves).
LABEL_TYPES: dict[str, Any] = {
    "binary": Literal[0, 1],
    "regression": Annotated[float, Field(allow_inf_nan=False)],
    "multiclass": str | int,
}
MAX_ID_LENGTH = 80  # the width of the log's id column (an id is a UUID's hex digits and a row number)


def feedback_type(config: PipelineConfig) -> Any:
    """The body of a pipeline's /feedback: labels typed for its task."""
    label_type = LABEL_TYPES[config.label.task]
    if config.label.task == "multiclass":
        label_type = python_type("string", config) | int
    label: Any = create_model(  # built from the config: typed as Any for the checker
        f"{config.name.title().replace('_', '')}Label",
        __config__=ConfigDict(extra="forbid"),
        id=(str, Field(max_length=MAX_ID_LENGTH, description="the prediction's id, from its answer")),
        label=(label_type, Field(description=f"the true label ({config.label.task})")),
    )
    return create_model(
        f"{label.__name__}s",
        __config__=ConfigDict(extra="forbid"),
        labels=(Annotated[list[label], Field(min_length=1, max_length=MAX_BATCH_ROWS)], ...),
    )


class Problem(BaseModel):
    loc: list[str | int]  # where: "body", then the format, field and row
    msg: str
    type: str


class Refused(BaseModel):
    """A 422: what in the body is wrong, each problem where it is (or, for a record that cannot be encoded,
    one sentence naming the record and field)."""

    detail: list[Problem] | str


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
    alias: str = Field(description="`champion`, or `challenger` for a pipeline that shadows or canaries it")
    before: str | None
    serving: str | None
    error: str | None


SCOPE_ROUTES: dict[ApiScope, str] = {
    "predict": "the predict routes",
    "feedback": "the feedback and records routes (ground truth and raw rows, which end up in training sets)",
    "admin": "/admin/reload",
}


def bearer_auth(scope: ApiScope, tokens: Mapping[ApiScope, str] | None) -> Callable[..., Awaitable[None]]:
    """The check of one scope's token: 401 without a known token, 403 with another scope's token or when the
    service was given no token of this scope."""
    variable = TOKEN_VARIABLES[scope]
    scheme = HTTPBearer(
        auto_error=False, scheme_name=f"{scope} token", description=f"{variable}: {SCOPE_ROUTES[scope]}"
    )

    def matches(sent: str, token: str | None) -> bool:
        return token is not None and secrets.compare_digest(sent.encode(), token.encode())

    async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)]) -> None:
        if tokens is None:
            return
        sent = credentials.credentials if credentials else ""
        if matches(sent, tokens.get(scope)):
            return
        if scope not in tokens:
            raise HTTPException(status_code=403, detail=f"this service has no {variable}: {scope} is closed")
        if any(matches(sent, token) for token in tokens.values()):
            raise HTTPException(status_code=403, detail=f"this token may not {scope}: send the {variable}")
        raise HTTPException(
            status_code=401,
            detail=f"missing or wrong bearer token: send 'Authorization: Bearer <{variable}>'",
            headers={"WWW-Authenticate": "Bearer"},
        )

    return check


HEAP_SETTLING = threading.Lock()
# Single records answered by one model call at most: the call runs on the event loop, and a larger batch would
# hold every other request (of any pipeline) for its whole length.
MAX_GATHERED_RECORDS = 128


def settle_heap() -> None:
    """Puts what the service keeps for its lifetime (models, request schemas, routes: some 200k objects) out of
    the cyclic collector's reach. Otherwise each full collection walks them all, a pause of tens of
    milliseconds that every request in flight waits out: measured with the model double at 8 connections, the
    1-row p99 went from 87 ms to 9 ms. What was frozen before is thawed and collected first, so that the cycles
    of a model or pipeline replaced since are freed."""
    with HEAP_SETTLING:  # the poller and /admin/reload may both call it
        gc.unfreeze()
        gc.collect()
        gc.freeze()


def predicted(model: ServedModel, records: list[dict[str, Any]]) -> list[Answer]:
    """The model's answers; a record that cannot be encoded refuses the request (422)."""
    try:
        return model.predict(records)
    except InvalidRecord as err:
        raise HTTPException(status_code=422, detail=str(err)) from err


def predicted_each(model: ServedModel, records: list[dict[str, Any]]) -> list[Answer | HTTPException]:
    """The model's answer to each record of single-record requests (``answers_each``), a record that cannot be
    encoded refusing only its own request (naming it as record 0, as it was sent)."""
    return [
        HTTPException(status_code=422, detail=str(answer)) if isinstance(answer, InvalidRecord) else answer
        for answer in answers_each(model, records)
    ]


def logged_rows(
    pipeline: str,
    version: str,
    request_id: str,
    ids: list[str],
    records: list[dict[str, Any]],
    answers: list[Answer],
    schema: pa.Schema | None = None,
) -> AnsweredRequest:
    """The rows of a request as the log takes them: the records as JSON text, or, for a request of
    ``COLUMNAR_ROWS`` or more when the pipeline's record ``schema`` is given, as typed columns."""
    columns = typed_columns(records, schema) if schema is not None and len(records) >= COLUMNAR_ROWS else None
    columnar = columns is not None
    return AnsweredRequest(
        request_id,
        pipeline,
        version,
        ids,
        inputs=[] if columnar else [pydantic_core.to_json(record).decode() for record in records],  # times in ISO
        predictions=answer_texts(answers),
        probabilities=[answer.probability for answer in answers],
        columns=columns,
    )


def typed_columns(records: list[dict[str, Any]], schema: pa.Schema) -> pa.Table | None:
    """The records as columns of ``schema``, or None when one holds a value the columns cannot (an integer
    beyond 64 bits): the request is then logged as text, as a small one is."""
    try:
        return pa.Table.from_pylist(records, schema=schema)
    except (OverflowError, pa.ArrowException):
        return None


def versions_changed(reloads: list[dict[str, Any]]) -> bool:
    """Whether a slot's refresh changed the version it serves."""
    return any(reload["before"] != reload["serving"] for reload in reloads)


def answer_bodies(ids: list[str], answers: list[Answer]) -> list[dict[str, Any]]:
    return [
        {"id": i, "prediction": a.prediction, "probability": a.probability} for i, a in zip(ids, answers, strict=True)
    ]


class Service:
    """State shared by the routes: the model slots, the prediction log and the metrics. Each pipeline's models
    come from ``models`` (by default the registry)."""

    def __init__(self, settings: Settings, options: ServiceOptions, models: ModelSources | None = None) -> None:
        self.settings = settings
        self.options = options
        self.models: ModelSources = models or partial(RegistryModels, settings)
        # Replaced whole, never changed in place, so that a request reading them while the poller follows the
        # pipelines folder sees one state or the other.
        self.config_errors: dict[str, str] = {}  # YAMLs of the folder that do not load: their last config serves
        if options.pipelines is None:
            scan = scan_pipelines(settings.pipelines_dir)
            self.configs: dict[str, PipelineConfig] = scan.configs
            self.note_config_errors(scan.errors)
        else:
            self.configs = {name: load_pipeline(name, settings.pipelines_dir) for name in options.pipelines}
        self.slots = {name: ModelSlot(config, self.models(config)) for name, config in self.configs.items()}
        self.challengers = {
            name: made for name, config in self.configs.items() if (made := challenger_of(config, self.models))
        }
        self.on_pipelines_changed: Callable[[set[str]], None] = lambda _changed: None
        self.metrics = ServiceMetrics()
        self.engine = create_store_engine(settings.predictions_db_url)
        self.log: PredictionLog | None = None
        self.shadows: ShadowRunner | None = None
        # The requests being answered, and the shadow's CPU time (what it may take from those it overlaps): the
        # shadow waits until there are none.
        self.in_flight = InFlight(ShadowClock())
        self.single_records: TurnBatcher[RouteKey, tuple[dict[str, Any], Route], tuple[str, str, dict[str, Any]]] = (
            TurnBatcher(self.answer_together, max_items=MAX_GATHERED_RECORDS)
        )
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        committed = self.metrics.shadow_slice_seconds.labels("commit").observe
        self.log = PredictionLog(
            self.engine,
            self.record_schema,
            shadow_slice_timer=committed,
            served=self.in_flight,
        )
        self.in_flight.on_quiet = self.log.wake_for_shadows
        self.shadows = ShadowRunner(self.log, self.metrics, self.in_flight)
        self.reload_all(retry_refused=True)
        self._poller = threading.Thread(target=self._poll, name="alias-poller", daemon=True)
        self._poller.start()

    def record_schema(self, pipeline: str) -> pa.Schema | None:
        """How the log's segments type the records of ``pipeline`` (None once it is no longer served)."""
        config = self.configs.get(pipeline)
        return None if config is None else record_schema(config)

    def stop(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join()
        if self.shadows:
            self.shadows.close()
        if self.log:
            self.log.close()
        self.engine.dispose()
        gc.unfreeze()

    def reload_all(self, retry_refused: bool = False) -> list[dict[str, Any]]:
        results = self._refresh_slots(retry_refused)
        if versions_changed(results):
            settle_heap()
        return results

    def _refresh_slots(self, retry_refused: bool) -> list[dict[str, Any]]:
        challengers = [challenger.slot for challenger in self.challengers.values()]
        results = [slot.refresh(retry_refused) for slot in [*self.slots.values(), *challengers]]
        for result in results:
            self.metrics.observe_reload(result)
        return results

    def _poll(self) -> None:
        while not self._stop.wait(self.options.poll_seconds):
            changed: set[str] = set()
            try:
                changed = self.follow_pipelines()
            except Exception:  # the folder unreadable for a moment: the pipelines served so far go on
                log.exception("could not read the pipelines folder %s", self.settings.pipelines_dir)
            results = self._refresh_slots(retry_refused=False)
            if changed or versions_changed(results):
                settle_heap()  # once per cycle, whatever changed

    def note_config_errors(self, errors: dict[str, str]) -> None:
        """Keeps the YAMLs that do not load, and logs each new reason once (/ready, which asks for no token, names
        the pipeline only: a reason can quote the file)."""
        found = {Path(path).stem: error for path, error in errors.items()}
        for name, error in found.items():
            if self.config_errors.get(name) != error:
                log.warning("pipeline '%s' does not load (its last good config serves on): %s", name, error)
        self.config_errors = found

    def follow_pipelines(self) -> set[str]:
        """Serve what the pipelines folder holds now (when the service follows it): a new YAML gets its routes
        and its champion, an edited one its new schema, a removed one stops being served (its log stays). A YAML
        that does not load keeps its last good config serving and is reported on /ready. Returns the names
        whose routes changed (the poller then settles the heap)."""
        if self.options.pipelines is not None:
            return set()
        scan = scan_pipelines(self.settings.pipelines_dir)
        broken = {Path(path).stem for path in scan.errors}
        self.note_config_errors(scan.errors)
        kept = {name: config for name, config in self.configs.items() if name in broken and name not in scan.configs}
        wanted = {**kept, **scan.configs}
        changed = {name for name in wanted.keys() | self.configs.keys() if wanted.get(name) != self.configs.get(name)}
        if not changed:
            return changed
        slots = {name: slot for name, slot in self.slots.items() if name in wanted and name not in changed}
        challengers = {name: each for name, each in self.challengers.items() if name in slots}
        for name in sorted(changed & wanted.keys()):
            slots[name] = ModelSlot(wanted[name], self.models(wanted[name]))
            self.metrics.observe_reload(slots[name].refresh(retry_refused=True))
            if made := challenger_of(wanted[name], self.models):
                challengers[name] = made
                self.metrics.observe_reload(made.slot.refresh(retry_refused=True))
        self.configs, self.slots, self.challengers = wanted, slots, challengers
        log.info("pipelines now served: %s (changed: %s)", sorted(wanted), sorted(changed))
        self.on_pipelines_changed(changed)
        return changed

    def model(self, pipeline: str) -> ServedModel:
        slot = self.slots.get(pipeline)
        if slot is None:
            raise HTTPException(status_code=404, detail=f"pipeline '{pipeline}' is not served any more")
        model = slot.current
        if model is None:
            raise HTTPException(status_code=503, detail=f"pipeline '{pipeline}' has no champion model to serve yet")
        return model

    def route(self, pipeline: str, routing: Routing) -> Route:
        """The version that answers a request of ``pipeline``, and the one that answers it in shadow, if any."""
        champion = self.model(pipeline)
        challenger = self.challengers.get(pipeline)
        loaded = challenger.slot.current if challenger else None
        if routing.alias == CHAMPION:
            return Route(champion)
        if routing.alias == CHALLENGER:
            if loaded is None:
                raise HTTPException(409, f"pipeline '{pipeline}' has no challenger loaded (see /ready)")
            return Route(loaded, canary=True)
        if challenger is None:
            return Route(champion)
        return challenger.router.route(champion, loaded, routing.caller_key)

    async def answer(
        self, pipeline: str, records: list[dict[str, Any]], routing: Routing = ANY_VERSION
    ) -> tuple[str, str, list[dict[str, Any]]]:
        """Predict the records of one request (off the event loop), commit every row to the log, then return
        (request id, model version, one answer per record); a row that cannot be logged is not answered."""
        route = self.route(pipeline, routing)
        model = route.serving
        started = time.perf_counter()
        answers = await run_in_threadpool(predicted, model, records)
        request_id = uuid.uuid4().hex
        ids = [f"{request_id}-{row}" for row in range(len(records))]
        logged = logged_rows(pipeline, model.version, request_id, ids, records, answers, self.record_schema(pipeline))
        bodies = answer_bodies(ids, answers)
        # Only plain values, which the cyclic collector does not track, wait for the commit: a thousand answers
        # kept alive meanwhile are walked by every collection that other requests' allocations set off.
        del answers
        await self.commit(pipeline, [logged])
        elapsed = time.perf_counter() - started
        self.metrics.observe_predictions(pipeline, model.task, bodies, elapsed, requests=1, calls=[len(bodies)])
        self.answered(pipeline, route, ids, records)
        return request_id, model.version, bodies

    def answered(self, pipeline: str, route: Route, ids: list[str], records: list[dict[str, Any]]) -> None:
        """Once the callers have their answers: counted by the alias that gave them, and shadowed."""
        self.metrics.routed_rows.labels(pipeline, route.alias).inc(len(ids))
        config = self.configs.get(pipeline)
        if route.shadow is not None and self.shadows is not None and config is not None:
            budget = config.deployment.shadow_budget_ms / 1000
            self.shadows.submit(ShadowJob(pipeline, route.shadow, ids, records, budget))

    async def answer_one(
        self, pipeline: str, record: dict[str, Any], routing: Routing = ANY_VERSION
    ) -> tuple[str, str, dict[str, Any]]:
        """``answer`` for a single-record request, batched with those of the same pipeline and route arriving
        with it (``batching``); its request id is also its answer's id."""
        route = self.route(pipeline, routing)
        return await self.single_records.submit(RouteKey(pipeline, *route.key), (record, route))

    async def answer_together(
        self, key: RouteKey, items: list[tuple[dict[str, Any], Route]]
    ) -> list[tuple[str, str, dict[str, Any]] | Exception]:
        """One model call and one log commit for single-record requests: for each, its request id, version and
        answer, or the refusal of that request alone (a record that cannot be encoded). When the whole batch
        is refused (the log out of reach), each caller gets a refusal of its own."""
        try:
            # The items of a key were routed alike: to models of the same versions.
            return await self._answer_together(key.pipeline, items[0][1], [record for record, _ in items])
        except HTTPException as err:  # not one instance raised in every caller's task: their tracebacks pile on it
            return [HTTPException(err.status_code, err.detail, err.headers) for _ in items]

    async def _answer_together(
        self, pipeline: str, route: Route, records: list[dict[str, Any]]
    ) -> list[tuple[str, str, dict[str, Any]] | Exception]:
        model = route.serving
        started = time.perf_counter()
        answers = predicted_each(model, records)
        served = [
            (place, uuid.uuid4().hex, answer) for place, answer in enumerate(answers) if isinstance(answer, Answer)
        ]
        bodies = answer_bodies([rid for _, rid, _ in served], [answer for _, _, answer in served])
        if served:
            logged = [
                logged_rows(pipeline, model.version, rid, [rid], [records[place]], [answer])
                for place, rid, answer in served
            ]
            await self.commit(pipeline, logged)
            elapsed = time.perf_counter() - started
            # A refused record made ``predicted_each`` call the model once per record.
            calls = [len(bodies)] if len(bodies) == len(records) else [1] * len(bodies)
            self.metrics.observe_predictions(pipeline, model.task, bodies, elapsed, requests=len(served), calls=calls)
            self.answered(pipeline, route, [rid for _, rid, _ in served], [records[place] for place, _, _ in served])
        replies = {place: (rid, model.version, body) for (place, rid, _), body in zip(served, bodies, strict=True)}
        return [answer if isinstance(answer, Exception) else replies[place] for place, answer in enumerate(answers)]

    async def commit(self, pipeline: str, answered: list[AnsweredRequest]) -> None:
        """Waits until the rows are committed to the log; refuses (503) when they cannot be."""
        assert self.log is not None
        try:
            async with asyncio.timeout(LOG_WAIT_SECONDS):
                await asyncio.wrap_future(self.log.submit_all(answered))
        except (LogUnavailable, TimeoutError) as err:
            self.metrics.errors.labels(pipeline, "log").inc(len(answered))  # one per request refused
            reason = err if isinstance(err, LogUnavailable) else LogUnavailable.waited(LOG_WAIT_SECONDS)
            raise HTTPException(
                status_code=503, detail=f"{reason}: the prediction is not answered (retry later)"
            ) from err

    async def store_feedback(self, pipeline: str, task: str, labels: list[Any]) -> FeedbackResponse:
        """Stores the true labels of answered predictions, all or none: a label that does not fit the task (or
        the serving model's classes) refuses the request (422)."""
        slot = self.slots.get(pipeline)
        classes = slot.current.classes if slot is not None and slot.current is not None else []
        refused = [
            {
                "loc": ("body", "labels", index, "label"),
                "msg": f"label {label.label!r:.100} of prediction {label.id!r:.100}: expected {expected}",
                "type": "value_error",
            }
            for index, label in enumerate(labels)
            if (expected := label_problem(task, classes, label.label)) is not None
        ]
        if refused:  # none of the batch is stored: the client sends it again once it is right
            raise RequestValidationError(refused)
        stored, unknown = await run_in_threadpool(
            record_feedback, self.engine, pipeline, {label.id: label.label for label in labels}, "api"
        )
        self.metrics.feedback.labels(pipeline).inc(len(stored))
        return FeedbackResponse(stored=stored, unknown=unknown)

    def collect_records(self, config: PipelineConfig, records: list[dict[str, Any]]) -> CollectResponse:
        """Writes the good raw records as a landing file of today and refuses the others, each with its reason;
        a pipeline that reads a snapshot takes none (409)."""
        try:
            result = collect(Layout(self.settings, config), records)
        except SnapshotSource as err:
            raise HTTPException(status_code=409, detail=str(err)) from None
        refused = [Refusal(**refusal) for refusal in result.refused]
        return CollectResponse(accepted=result.accepted, refused=refused, file=result.file)


def routing_of(request: Request) -> Routing:
    try:
        return Routing.of(request.headers)
    except ValueError as err:
        raise HTTPException(status_code=400, detail=str(err)) from None


def json_response(content: Any) -> Response:
    """JSON serialized by pydantic-core straight from plain data: the predict routes skip FastAPI's response
    model pass (the models still document the routes)."""
    return Response(pydantic_core.to_json(content), media_type="application/json")


def media_type(request: Request) -> str:
    """The type the body is declared as (JSON when the request does not say)."""
    return request.headers.get("content-type", "application/json").split(";")[0].strip().lower()


def require_json(request: Request, *others: str) -> None:
    """Refuses (415) a body declared as something else than JSON (or one of the ``others`` media types the route
    also reads)."""
    declared = media_type(request)
    if declared not in ("application/json", *others) and not declared.endswith("+json"):
        expected = " or ".join(f"'{kind}'" for kind in ("application/json", *others))
        raise HTTPException(status_code=415, detail=f"Content-Type is '{declared}': expected {expected}")


async def parse_body(request: Request, adapter: TypeAdapter[Any]) -> Any:
    """The request body validated from its JSON bytes in one pydantic-core pass (three times faster than
    FastAPI's json.loads then validation for a 1000-record batch); errors answer 422 as FastAPI's do. A body
    declared as something else than JSON is refused (415), as FastAPI would not read it as JSON either."""
    require_json(request)
    try:
        return adapter.validate_json(await request.body())
    except ValidationError as err:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in err.errors(include_url=False)]
        ) from None


def parsed_body(answer: type[BaseModel], schema: dict[str, Any]) -> dict[str, Any]:
    """The route options that document a route parsing its own body (``parse_body``): the body's schema and the
    answer's model."""
    return {
        "response_model": answer,
        "responses": {422: {"model": Refused, "description": "The body does not fit the route's schema"}},
        "openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
    }


class RequestMetrics:
    """Counts requests and their latency per route, and the API's requests in flight from their first byte
    received to their last sent (the shadow answers only when there are none). A plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` (``@app.middleware("http")``) runs the app in a task of its own and streams the
    response through a queue, on every request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, in_flight: InFlight) -> None:
        self.app = app
        self.metrics = metrics
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            with self.served(scope["path"].startswith(API_PREFIX)):
                await self.app(scope, receive, send_with_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)

    @contextmanager
    def served(self, api: bool) -> Iterator[None]:
        """An API request in flight (the shadow waits for none), and the CPU time shadow work took meanwhile: read
        before it leaves, since the shadow may begin as soon as it has."""
        if not api:  # a probe, a scrape of the metrics
            yield
            return
        with self.in_flight.serving() as shadow_taken:
            try:
                yield
            finally:
                self.metrics.request_shadow_cpu_seconds.observe(shadow_taken())


class BodyLimit:
    """Refuses (413) a request body larger than ``max_bytes``, as soon as its declared length or the bytes
    received so far exceed it: the route reading the body gets the refusal instead of the rest of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise self.refusal()
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.refusal()
            return message

        await self.app(scope, limited_receive, send)

    def refusal(self) -> HTTPException:
        return HTTPException(status_code=413, detail=f"request body larger than the limit of {self.max_bytes:,} bytes")


async def refuse_invalid(_: Request, err: RequestValidationError) -> Response:
    # Unlike FastAPI's own handler, the refused input is not echoed: it can be megabytes (a batch over the
    # limit), bytes that are not UTF-8 or a NaN (FastAPI then answers 500), and the client has it anyway.
    errors = [{key: value for key, value in error.items() if key != "input"} for error in err.errors()]
    detail = pydantic_core.to_json({"detail": errors}, fallback=str)
    return Response(detail, status_code=422, media_type="application/json")


def create_app(settings: Settings, options: ServiceOptions, models: ModelSources | None = None) -> FastAPI:
    """The inference API of the pipelines ``options`` names, their models from ``models`` (by default the
    registry)."""
    service = Service(settings, options, models)
    auth = {scope: [Depends(bearer_auth(scope, options.tokens))] for scope in TOKEN_VARIABLES}

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
        docs_url=None,  # FastAPI's own pages load Swagger UI from a CDN: blank without internet
        redoc_url=None,
    )
    patch_fastapi(app, redirect_from_root_to_docs=False)  # Swagger UI served from this process, at /docs

    app.add_middleware(RequestMetrics, metrics=service.metrics, in_flight=service.in_flight)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.exception_handler(RequestValidationError)(refuse_invalid)
    add_service_routes(app, service, auth["admin"])
    service.on_pipelines_changed = partial(replace_pipeline_routes, app, service, auth)
    for name, config in service.configs.items():
        add_pipeline_routes(app, service, name, config, auth)
    return app


def run_service(app: FastAPI, host: str, port: int) -> None:
    """Serves ``app`` until SIGTERM/SIGINT; requests in flight get 30 s to finish and be logged."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info", timeout_graceful_shutdown=30)


def add_service_routes(app: FastAPI, service: Service, admin_auth: list[Any]) -> None:
    """/health, /ready, /metrics and /admin/reload."""

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"])
    def ready(response: Response) -> dict[str, Any]:
        """Readiness: every pipeline has a model serving. It asks for no token, so a refused version is named
        without its reason (a path, a column, a registry address): that is in the log and /admin/reload's answer."""
        pipelines = {
            name: {
                "model": slot.config.registered_model,
                "version": slot.current.version if slot.current else None,
                "refused_version": slot.refused if slot.last_error else None,
                **challenger_state(service.challengers.get(name)),
            }
            for name, slot in service.slots.items()
        }
        ok = all(p["version"] for p in pipelines.values())
        response.status_code = 200 if ok else 503
        return {"ready": ok, "pipelines": pipelines, "config_errors": sorted(service.config_errors)}

    @app.get("/metrics", tags=["service"], response_class=Response)
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.post("/admin/reload", tags=["service"], dependencies=admin_auth, response_model=list[ReloadResult])
    def reload() -> list[dict[str, Any]]:
        """Load now the version each alias points at (the poller does it every few seconds), retrying a
        version refused before."""
        return service.reload_all(retry_refused=True)


def challenger_state(challenger: Challenger | None) -> dict[str, Any]:
    """What /ready says of a pipeline's challenger, when it shadows or canaries one: the version loaded and the
    shares of requests it answers in shadow and as the canary."""
    if challenger is None:
        return {}
    slot, router = challenger.slot, challenger.router
    return {
        "challenger": {
            "version": slot.current.version if slot.current else None,
            "refused_version": slot.refused if slot.last_error else None,
            "shadow": router.shadow.share,
            "canary": router.canary.share,
        }
    }


def routes_of(names: set[str]) -> Callable[[Any], bool]:
    prefixes = tuple(f"{API_PREFIX}{name}/" for name in names)
    return lambda route: getattr(route, "path", "").startswith(prefixes)


def replace_pipeline_routes(app: FastAPI, service: Service, auth: dict[ApiScope, list[Any]], changed: set[str]) -> None:
    """The routes of the pipelines in ``changed`` as the service now serves them (none for a pipeline gone)."""
    # Built aside and swapped in at once: requests keep routing on the old list until then.
    staging = FastAPI()
    for name in sorted(changed & service.configs.keys()):
        add_pipeline_routes(staging, service, name, service.configs[name], auth)
    belongs = routes_of(changed)
    app.router.routes = [r for r in app.router.routes if not belongs(r)] + [
        r for r in staging.router.routes if belongs(r)
    ]
    app.openapi_schema = None  # /openapi.json and /docs describe the pipelines served now


@dataclass(frozen=True)
class RequestBodies:
    """What a pipeline's routes read: the adapters that validate each body from its JSON bytes, and the bodies'
    OpenAPI schemas."""

    record: TypeAdapter[Any]
    batch: TypeAdapter[Any]
    feedback: TypeAdapter[Any]
    record_schema: dict[str, Any]
    batch_schema: dict[str, Any]
    feedback_schema: dict[str, Any]


def request_bodies(config: PipelineConfig) -> RequestBodies:
    record: Any = record_type(config)  # built from the config at start-up: typed as Any for the checker
    one: TypeAdapter[Any] = TypeAdapter(record)
    batch: TypeAdapter[Any] = TypeAdapter(
        create_model(
            f"{record.__name__}Batch",
            __config__=ConfigDict(extra="forbid"),
            records=(Annotated[list[record], Field(min_length=1, max_length=MAX_BATCH_ROWS)], ...),
        )
    )
    feedback: TypeAdapter[Any] = TypeAdapter(feedback_type(config))
    record_schema = one.json_schema()
    feedback_schema = feedback.json_schema()
    feedback_schema["properties"]["labels"]["items"] = next(iter(feedback_schema.pop("$defs").values()))
    # The batch model's schema, its record inlined: an operation's schema cannot point into its own $defs.
    batch_schema = batch.json_schema()
    batch_schema["properties"]["records"]["items"] = batch_schema.pop("$defs")[record.__name__]
    return RequestBodies(one, batch, feedback, record_schema, batch_schema, feedback_schema)


Endpoint = Callable[..., Any]


Post = Callable[..., Callable[[Endpoint], Endpoint]]


def add_pipeline_routes(
    app: FastAPI, service: Service, name: str, config: PipelineConfig, auth: dict[ApiScope, list[Any]]
) -> None:
    """The routes of one pipeline, under ``/v1/<name>/``."""
    bodies = request_bodies(config)

    def post(path: str, scope: ApiScope, summary: str, **documented: Any) -> Callable[[Endpoint], Endpoint]:
        route = f"{API_PREFIX}{name}/{path}"
        return app.post(route, tags=[f"pipeline {name}"], dependencies=auth[scope], summary=summary, **documented)

    add_typed_prediction_routes(post, service, name, bodies)
    add_invocation_route(post, service, name, config, bodies.record_schema)
    add_feedback_routes(post, service, name, config, bodies)


def add_typed_prediction_routes(post: Post, service: Service, name: str, bodies: RequestBodies) -> None:
    @post("predict", "predict", f"Predict one {name} record", **parsed_body(PredictionResponse, bodies.record_schema))
    async def predict(request: Request) -> Response:
        record = await parse_body(request, bodies.record)
        request_id, version, answer = await service.answer_one(name, record, routing_of(request))
        return json_response({"request_id": request_id, "pipeline": name, "model_version": version, **answer})

    @post(
        "predict/batch",
        "predict",
        f"Predict up to {MAX_BATCH_ROWS:,} records",
        **parsed_body(BatchResponse, bodies.batch_schema),
    )
    async def predict_batch(request: Request) -> Response:
        records = (await parse_body(request, bodies.batch)).records
        request_id, version, answers = await service.answer(name, records, routing_of(request))
        return json_response(
            {"request_id": request_id, "pipeline": name, "model_version": version, "predictions": answers}
        )


def add_invocation_route(
    post: Post, service: Service, name: str, config: PipelineConfig, record_schema: dict[str, Any]
) -> None:
    """``/invocations``: the rows of a body in MLflow's request formats (JSON or CSV), validated column by column
    off the event loop (a 10,000-row body takes tens of milliseconds)."""
    columns = ColumnTypes.of(config, MAX_BATCH_ROWS)
    documented = parsed_body(InvocationResponse, invocation_schema(columns, record_schema))
    documented["openapi_extra"]["requestBody"]["content"]["text/csv"] = {"schema": {"type": "string"}}

    @post(
        "invocations",
        "predict",
        f"Predict up to {MAX_BATCH_ROWS:,} rows sent in MLflow's request formats",
        **documented,
    )
    async def invocations(request: Request) -> Response:
        require_json(request, "text/csv")
        read = read_csv_invocation if media_type(request) == "text/csv" else read_invocation
        try:
            records = await run_in_threadpool(read, await request.body(), columns)
        except InvalidInvocation as err:
            raise RequestValidationError(err.errors) from None
        request_id, version, answers = await service.answer(name, records, routing_of(request))
        return json_response(
            {
                "predictions": [answer["prediction"] for answer in answers],
                "probabilities": [answer["probability"] for answer in answers],
                "ids": [answer["id"] for answer in answers],
                "request_id": request_id,
                "pipeline": name,
                "model_version": version,
            }
        )


def add_feedback_routes(post: Post, service: Service, name: str, config: PipelineConfig, bodies: RequestBodies) -> None:
    @post(
        "feedback",
        "feedback",
        "True labels of answered predictions",
        **parsed_body(FeedbackResponse, bodies.feedback_schema),
    )
    async def feedback(request: Request) -> FeedbackResponse:
        labels = (await parse_body(request, bodies.feedback)).labels
        return await service.store_feedback(name, config.label.task, labels)

    @post("records", "feedback", "Collect raw records for the next ingestion run")
    def collect_records(body: RawRecords) -> CollectResponse:
        """Raw source records for the next ingestion run: the good ones are written as a landing file of
        today, the bad ones refused with the reason (the request succeeds even when all are refused: the
        answer says which and why, record by record)."""
        return service.collect_records(config, body.records)
