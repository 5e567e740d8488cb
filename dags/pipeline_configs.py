"""
Reports the pipeline YAMLs that do not load, as this file's import error in the Airflow UI (Browse → DAG import
errors): one line per file, with the key that is wrong and what was expected. Such a pipeline has no DAGs until
its YAML is fixed; every other pipeline keeps its DAGs, its schedule and its runs. This file defines no DAG.
"""

from __future__ import annotations

from flightplan.config import ConfigError
from shared import PIPELINES

if PIPELINES.errors:
    raise ConfigError(
        f"{len(PIPELINES.errors)} pipeline YAML(s) do not load and have no DAGs until fixed:\n\n"
        + "\n\n".join(PIPELINES.errors.values())
    )
