"""Prometheus metrics of the inference API, in a registry of its own (one per app)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from flightplan.serving.models import Answer

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PROBABILITY_BUCKETS = tuple(i / 10 for i in range(1, 11))


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("flightplan_http_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "flightplan_http_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.errors = Counter("flightplan_errors", "Failures by kind", ["pipeline", "kind"], registry=r)
        self.rows = Counter("flightplan_predicted_rows", "Rows answered (and logged)", ["pipeline"], registry=r)
        self.predict_seconds = Histogram(
            "flightplan_predict_seconds",
            "Time to predict and log one request",
            ["pipeline"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_call_rows = Histogram(
            "flightplan_model_call_rows",
            "Rows per model call (single-record requests arriving together share one)",
            ["pipeline"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 1000, 10_000),
            registry=r,
        )
        self.probability = Histogram(
            "flightplan_prediction_probability",
            "Probability of the answered predictions",
            ["pipeline"],
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.value = Histogram("flightplan_prediction_value", "Regression predictions", ["pipeline"], registry=r)
        self.version = Gauge("flightplan_model_version", "Registry version serving", ["pipeline", "model"], registry=r)
        self.reloads = Counter(
            "flightplan_model_reloads", "Model swaps and refusals", ["pipeline", "outcome"], registry=r
        )
        self.feedback = Counter("flightplan_feedback_labels", "True labels stored", ["pipeline"], registry=r)

    def observe_predictions(
        self, pipeline: str, task: str, answers: list[Answer], seconds: float, requests: int
    ) -> None:
        """One model call's answers, for ``requests`` requests that each took ``seconds``."""
        self.rows.labels(pipeline).inc(len(answers))
        self.model_call_rows.labels(pipeline).observe(len(answers))
        predict_seconds = self.predict_seconds.labels(pipeline)
        for _ in range(requests):
            predict_seconds.observe(seconds)
        if task == "regression":
            values = self.value.labels(pipeline)
            for answer in answers:
                values.observe(answer.prediction)
        else:
            probabilities = self.probability.labels(pipeline)
            for answer in answers:
                probabilities.observe(answer.probability or 0.0)

    def observe_reload(self, result: dict[str, Any]) -> None:
        pipeline = result["pipeline"]
        if result["error"]:
            self.reloads.labels(pipeline, "refused").inc()
        elif result["serving"] != result["before"]:
            self.reloads.labels(pipeline, "swapped").inc()
        if result["serving"] is not None:
            self.version.labels(pipeline, "champion").set(float(result["serving"]))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
