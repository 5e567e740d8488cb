"""Batch scoring of the demo days on the shared Spark session with the champion's native booster."""

from __future__ import annotations

import json

import numpy as np
from flightplan.data import stages as data_stages
from flightplan.data.batches import read_partitions
from flightplan.deployment import batch
from flightplan.features import derive, encode
from flightplan.layout import Layout
from flightplan.model import package
from flightplan.model.registry import load_version

from tests.support.pipeline import END_DAY, FIRST_DAY


def test_batch_scores_every_wrangled_row_once_as_the_onnx_model_would(champion: str, layout: Layout, spark) -> None:  # type: ignore[no-untyped-def]
    job = data_stages.StageInput("flights", FIRST_DAY, END_DAY)
    first = json.loads(batch.score(job).read_text())
    again = json.loads(batch.score(job).read_text())
    part = layout.config.source.partition_column
    wrangled = read_partitions(layout.dataset("wrangled"), part, job.days)
    assert first["rows_total"] == again["rows_total"] == wrangled.num_rows
    assert first["model_version"] == champion

    key = [*layout.config.source.key]
    scored = read_partitions(layout.dataset("predictions"), part, job.days).to_pandas()
    assert set(scored["model_version"]) == {champion} and not scored.duplicated(key).any()
    model = load_version(layout.settings, layout.config.registered_model, champion)
    rows = derive(wrangled, layout.config.features.derived).to_pandas().sort_values(key)
    expected = package.predict(package.session(model.onnx), encode(rows, model.feature_map), "binary")
    merged = rows[key].assign(expected=expected).merge(scored, on=key)
    assert len(merged) == len(rows)
    assert np.abs(merged["expected"] - merged["probability"]).max() < 1e-5
    threshold = model.metadata["threshold"]
    assert (merged["prediction"] == (merged["probability"] >= threshold).astype(int)).all()
