"""The inference API's histograms observed a request at a time say what Prometheus' own histogram says."""

from __future__ import annotations

import numpy as np
from flightplan.serving.metrics import FEW_VALUES, PROBABILITY_BUCKETS, VALUE_BUCKETS, PipelineHistogram
from prometheus_client import CollectorRegistry, Histogram, generate_latest


def exposition(registry: CollectorRegistry) -> list[str]:
    """The sample lines of the buckets, count and sum (not the creation time, which differs)."""
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_a_request_observed_at_once_gives_the_samples_of_observing_each_value() -> None:
    values = {
        "flights": [0.0, 0.1, 0.1000001, 0.35, 0.5, 0.9, 1.0, 1.0, 0.2],  # on the bounds too
        "loans": [12.5, -3.0, 0.005, 7.5, 1e6, *np.linspace(-1, 12, FEW_VALUES).tolist()],  # a few, and many
    }
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bulk = PipelineHistogram("answers", "answered values", sorted({*PROBABILITY_BUCKETS, *VALUE_BUCKETS}), ours)
    single = Histogram("answers", "answered values", ["pipeline"], registry=theirs, buckets=bulk.bounds.tolist())
    for pipeline, observed in values.items():
        bulk.observe(pipeline, observed[:4])
        bulk.observe(pipeline, observed[4:])  # loans: as many as numpy counts
        for value in observed:
            single.labels(pipeline).observe(value)
    assert len(exposition(ours)) == 2 * (len(bulk.bounds) + 3)  # per pipeline: its buckets, +Inf, count, sum
    assert exposition(ours) == exposition(theirs)
