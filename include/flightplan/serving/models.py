"""The model a pipeline serves: the registry version an alias points at, ready to answer, and the swap to a
new version that only happens once the new one has loaded and answered a smoke test."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pydantic_core

from flightplan.config import PipelineConfig
from flightplan.model import package
from flightplan.model.registry import CHAMPION, alias_version, decision_threshold, load_version, native_booster
from flightplan.serving.inputs import InvalidRecord, RowEncoder
from flightplan.settings import Settings

log = logging.getLogger(__name__)
BOOSTER_MIN_ROWS = 100


@dataclass(frozen=True)
class Answer:
    prediction: Any  # binary: 0/1 at the model's threshold; multiclass: the class; regression: the value
    probability: float | None  # binary: P(1); multiclass: P(predicted class); regression: None


def answer_texts(answers: list[Answer]) -> list[str]:
    """The predictions as the log keeps them: JSON text."""
    return [pydantic_core.to_json(answer.prediction).decode() for answer in answers]


Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    task: str
    threshold: float
    classes: list[str]
    encoder: RowEncoder
    # The model's outputs for an encoded matrix, in the shape the native model gives (binary: P(1); multiclass:
    # one probability per class; regression: the values).
    scores: Scorer

    def predict(self, records: list[dict[str, Any]]) -> list[Answer]:
        outputs = self.scores(self.encoder.encode(records))
        if self.task == "binary":
            return [Answer(int(p >= self.threshold), float(p)) for p in outputs]
        if self.task == "multiclass":
            best = outputs.argmax(axis=1)
            return [Answer(self.classes[i], float(row[i])) for i, row in zip(best, outputs, strict=True)]
        return [Answer(float(value), None) for value in outputs]


def answers_each(model: ServedModel, records: list[dict[str, Any]]) -> list[Answer | InvalidRecord]:
    """The model's answer to each record, in one call; when a record cannot be encoded, each record alone, so
    that only that one is refused."""
    try:
        return list(model.predict(records))
    except InvalidRecord:
        return [_answer_alone(model, record) for record in records]


def _answer_alone(model: ServedModel, record: dict[str, Any]) -> Answer | InvalidRecord:
    try:
        return model.predict([record])[0]
    except InvalidRecord as refusal:
        return refusal


@dataclass(frozen=True)
class RegistryScorer:
    """A registry version's scores: onnxruntime for small requests (12-18x faster than xgboost on one row); the
    native booster, whose parity with the ONNX model was proven on the test set, for large ones, where it is
    faster."""

    session: Any
    task: str
    booster: Any | None = None  # the version's native booster, when its run kept one

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        if self.booster is not None and len(matrix) >= BOOSTER_MIN_ROWS:
            scores = np.asarray(self.booster.inplace_predict(matrix), dtype=np.float64)
            return scores.reshape(len(matrix), -1) if self.task == "multiclass" else scores
        return package.predict(self.session, matrix, self.task)

    def agrees(self, matrix: np.ndarray) -> bool:
        """Whether the booster, if any, gives the ONNX model's outputs on ``matrix``."""
        return self.booster is None or bool(
            np.allclose(self(matrix), package.predict(self.session, matrix, self.task), rtol=1e-4, atol=1e-5)
        )


class ModelRefused(RuntimeError):
    """A version that cannot serve: it failed to load, to encode the pipeline's inputs or to answer."""


class ModelSource(Protocol):
    """Where the models of one pipeline come from: the registry in service; a double in the API's tests."""

    def version_of(self, alias: str) -> str | None:
        """The version ``alias`` points at; None while it points at none."""

    def load(self, version: str) -> ServedModel:
        """The version ready to answer, smoke-tested; :class:`ModelRefused` when it cannot serve."""


# The source of each pipeline's models, given its config.
ModelSources = Callable[[PipelineConfig], ModelSource]


@dataclass(frozen=True)
class RegistryModels:
    """The pipeline's registered model versions, as the MLflow registry holds them."""

    settings: Settings
    config: PipelineConfig

    def version_of(self, alias: str) -> str | None:
        return alias_version(self.settings, self.config.registered_model, alias)

    def load(self, version: str) -> ServedModel:
        return load_served(self.settings, self.config, version)


def load_served(settings: Settings, config: PipelineConfig, version: str) -> ServedModel:
    """A registry version of the pipeline's model, loaded and smoke-tested."""
    try:
        registered = load_version(settings, config.registered_model, version)
        feature_map = registered.feature_map
        scorer = RegistryScorer(
            package.session(registered.onnx, threads=1),
            feature_map.task,
            native_booster(settings, config.registered_model, version),
        )
        model = ServedModel(
            name=registered.name,
            version=registered.version,
            task=feature_map.task,
            threshold=decision_threshold(registered.metadata),
            classes=feature_map.classes,
            encoder=RowEncoder(config, feature_map),
            scores=scorer,
        )
        if not scorer.agrees(smoke_test(model)):
            raise ModelRefused(f"{model.name} version {model.version}: its booster and its ONNX model disagree")
    except ModelRefused:
        raise
    except Exception as err:
        raise ModelRefused(f"{config.registered_model} version {version}: {err}") from err
    return model


def smoke_test(model: ServedModel) -> np.ndarray:
    """The model answers records with every field missing (time parts aside) with finite outputs; returns the
    rows it was given."""
    rows = np.full((BOOSTER_MIN_ROWS, len(model.encoder.steps)), np.nan, dtype=np.float32)
    outputs = model.scores(rows)
    if len(outputs) != len(rows) or not np.isfinite(outputs).all():
        raise ModelRefused(f"{model.name} version {model.version} gave {outputs!r} on the smoke-test rows")
    return rows


class ModelSlot:
    """The model serving one pipeline. Requests take ``current`` once and use it to the end, so a swap
    never changes the model under a request in flight."""

    def __init__(self, config: PipelineConfig, models: ModelSource, alias: str = CHAMPION) -> None:
        self.config = config
        self.models = models
        self.alias = alias
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.refused: str | None = None  # the version last refused: polling does not retry it
        self._lock = threading.Lock()  # one load at a time; serving never waits on it

    def refresh(self, retry_refused: bool = False) -> dict[str, Any]:
        """Load the version the alias points at if it is not the one serving; keep the old one on failure.
        Returns what happened, with ``error`` set when the version was refused by this call."""
        with self._lock:
            before = self.current.version if self.current else None
            target = None
            try:
                target = self.models.version_of(self.alias)
                if target is None and self.alias != CHAMPION:
                    # A challenger whose alias is gone stops answering; a champion's last version serves on.
                    self.current = None
                elif target == self.refused and not retry_refused:
                    return self._result(before, before, None)
                elif target is not None and target != before:
                    self.current = self.models.load(target)
                    log.info("%s: %s is version %s (was %s)", self.config.name, self.alias, target, before)
                self.last_error, self.refused = None, None
            except Exception as err:
                self.last_error, self.refused = str(err), target
                log.error("%s: reload refused, still serving version %s: %s", self.config.name, before, err)
            return self._result(before, self.current.version if self.current else None, self.last_error)

    def _result(self, before: str | None, serving: str | None, error: str | None) -> dict[str, Any]:
        return {"pipeline": self.config.name, "alias": self.alias, "before": before, "serving": serving, "error": error}
