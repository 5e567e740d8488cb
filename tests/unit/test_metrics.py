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
        "taxis": [float("inf"), 3.0, -2.5, 1e308, 1e308],  # a value past every bound; a sum past the largest float
    }
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bulk = PipelineHistogram("answers", "answered values", sorted({*PROBABILITY_BUCKETS, *VALUE_BUCKETS}), ours)
    single = Histogram("answers", "answered values", ["pipeline"], registry=theirs, buckets=bulk.bounds)
    for pipeline, observed in values.items():
        bulk.observe(pipeline, observed[:4])
        bulk.observe(pipeline, observed[4:])  # loans: as many as numpy counts
        for value in observed:
            single.labels(pipeline).observe(value)
    assert len(exposition(ours)) == 3 * (len(bulk.bounds) + 3)  # per pipeline: its buckets, +Inf, count, sum
    assert exposition(ours) == exposition(theirs)


def test_a_nan_is_in_no_bucket_and_not_in_the_sum() -> None:
    registry = CollectorRegistry()
    histogram = PipelineHistogram("answers", "answered values", PROBABILITY_BUCKETS, registry)
    histogram.observe("few", [0.25, float("nan")])
    histogram.observe("many", [0.25, *[float("nan")] * FEW_VALUES])
    samples = exposition(registry)
    for pipeline in ("few", "many"):
        assert f'answers_count{{pipeline="{pipeline}"}} 1.0' in samples, samples
        assert f'answers_sum{{pipeline="{pipeline}"}} 0.25' in samples, samples
