"""Fixtures of the integration tier's modules that draft pipelines of their own."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spark) -> Path:  # type: ignore[no-untyped-def]
    """A pipelines folder of the test's own (drafted into by the test), landing files ingested without Spark."""
    folder = tmp_path / "pipelines"
    monkeypatch.setenv("FLIGHTPLAN_PIPELINES_DIR", str(folder))
    monkeypatch.setenv("FLIGHTPLAN_INGEST_ENGINE", "local")
    return folder
