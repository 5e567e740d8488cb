"""Prometheus metrics of the inference API, in a registry of its own (one per app)."""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PROBABILITY_BUCKETS = tuple(i / 10 for i in range(1, 11))
FEW_VALUES = 32
VALUE_BUCKETS = Histogram.DEFAULT_BUCKETS[:-1]  # without its +Inf, which every histogram adds
# A slice of shadow work is sized to half of ``deployment.shadow_budget_ms`` (2 ms unless set): bounds at half the
# default budget and at the whole of it tell the slices that kept to it.
SHADOW_SLICE_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.064, 0.25, 1.0)


class PipelineHistogram:
    """A histogram per pipeline observed a request's values at once: numpy counts them into the buckets in one
    call, where observing a 1000-row request's probabilities one by one cost as much as encoding its rows
    (measured: 1.06 ms against 0.09 ms for the whole of ``observe_predictions``)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = [float(bound) for bound in buckets]  # upper bounds; +Inf follows
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, pipeline: str, values: list[float]) -> None:
        # Bucket i counts bounds[i - 1] < value <= bounds[i], as Prometheus' "le" does. A NaN is in no bucket,
        # as in prometheus_client, and left out of the sum too. A few values (a batch of single-record
        # requests) are placed one by one: there numpy's calls cost more than the bisections.
        if len(values) < FEW_VALUES:
            counts, total = [0] * (len(self.bounds) + 1), 0.0
            for value in values:
                if not math.isnan(value):
                    counts[bisect.bisect_left(self.bounds, value)] += 1
                    total += value
        else:
            numbers = np.asarray(values, dtype=np.float64)
            numbers = numbers[~np.isnan(numbers)]
            places = np.searchsorted(self.bounds, numbers, side="left")
            counts = np.bincount(places, minlength=len(self.bounds) + 1).tolist()
            total = sum(numbers.tolist())  # in order, as prometheus_client adds them up
        with self._lock:
            kept = self._counts.setdefault(pipeline, [0] * len(counts))
            for place, count in enumerate(counts):
                kept[place] += count
            self._sums[pipeline] = self._sums.get(pipeline, 0.0) + total

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["pipeline"])
        with self._lock:
            observed = [(pipeline, list(counts), self._sums[pipeline]) for pipeline, counts in self._counts.items()]
        bounds = [*map(floatToGoString, self.bounds), "+Inf"]
        for pipeline, counts, total in observed:
            cumulative = itertools.accumulate(counts)
            family.add_metric([pipeline], list(zip(bounds, cumulative, strict=True)), total)
        yield family


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
        self.probability = PipelineHistogram(
            "flightplan_prediction_probability", "Probability of the answered predictions", PROBABILITY_BUCKETS, r
        )
        self.value = PipelineHistogram("flightplan_prediction_value", "Regression predictions", VALUE_BUCKETS, r)
        self.version = Gauge("flightplan_model_version", "Registry version serving", ["pipeline", "model"], registry=r)
        self.reloads = Counter(
            "flightplan_model_reloads", "Model swaps and refusals", ["pipeline", "alias", "outcome"], registry=r
        )
        self.feedback = Counter("flightplan_feedback_labels", "True labels stored", ["pipeline"], registry=r)
        self.routed_rows = Counter(
            "flightplan_routed_rows", "Rows answered by the champion or, as a canary, the challenger",
            ["pipeline", "alias"], registry=r,
        )  # fmt: skip
        self._add_shadow_metrics(r)

    def _add_shadow_metrics(self, r: CollectorRegistry) -> None:
        self.shadow_rows = Counter(
            "flightplan_shadow_rows", "Rows answered in shadow, refused by the shadow version, failed or skipped",
            ["pipeline", "outcome"], registry=r,
        )  # fmt: skip
        self.shadow_slice_seconds = Histogram(
            "flightplan_shadow_slice_seconds",
            "CPU time of one slice of shadow work, which a served request arriving meanwhile may wait for: of "
            "answering rows and handing them to the log, or of committing them",
            ["work"],
            buckets=SHADOW_SLICE_BUCKETS,
            registry=r,
        )
        self.request_shadow_cpu_seconds = Histogram(
            "flightplan_request_shadow_cpu_seconds",
            "CPU time shadow work took while an API request was served, from its first byte received to its last "
            "sent: the most the shadow could have taken from it",
            buckets=SHADOW_SLICE_BUCKETS,
            registry=r,
        )

    def observe_predictions(
        self, pipeline: str, task: str, bodies: list[dict[str, Any]], seconds: float, requests: int, calls: list[int]
    ) -> None:
        """The answers (as their callers get them) of ``requests`` requests that each took ``seconds``, given by model
        calls of ``calls`` rows each."""
        self.rows.labels(pipeline).inc(len(bodies))
        call_rows = self.model_call_rows.labels(pipeline)
        for rows in calls:
            call_rows.observe(rows)
        predict_seconds = self.predict_seconds.labels(pipeline)
        for _ in range(requests):
            predict_seconds.observe(seconds)
        if task == "regression":
            self.value.observe(pipeline, [body["prediction"] for body in bodies])
        else:
            self.probability.observe(pipeline, [body["probability"] or 0.0 for body in bodies])

    def observe_reload(self, result: dict[str, Any]) -> None:
        pipeline, alias = result["pipeline"], result["alias"]
        if result["error"]:
            self.reloads.labels(pipeline, alias, "refused").inc()
        elif result["serving"] != result["before"]:
            self.reloads.labels(pipeline, alias, "swapped").inc()
        if result["serving"] is not None:
            self.version.labels(pipeline, alias).set(float(result["serving"]))
        elif result["before"] is not None:  # a challenger unloaded: no version is its any more
            self.version.remove(pipeline, alias)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
