"""What the DAG files share: the assets that chain them and the pipelines a run can choose from.
Listed in .airflowignore: it holds no DAG."""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import Asset
from flightplan.settings import load_settings

SPLITS = Asset(name="flightplan_splits", uri="file:///flightplan/splits")
CHALLENGER = Asset(name="flightplan_challenger", uri="file:///flightplan/challenger")
PIPELINES = sorted(p.stem for p in Path(load_settings().pipelines_dir).glob("*.yaml"))
