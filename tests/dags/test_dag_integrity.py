"""Every DAG imports, follows the house rules, and keeps heavy libraries out of parse time."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
HEAVY = (
    "pyspark",
    "mlflow",
    "great_expectations",
    "xgboost",
    "pandas",
    "pyarrow",
    "evidently",
    "onnxruntime",
    "optuna",
)


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow-home")))
    # Airflow puts the dags folder on sys.path, so DAG files can share dags/shared.py; as it does here.
    sys.path.insert(0, str(DAGS))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_imports(dagbag) -> None:  # type: ignore[no-untyped-def]
    from flightplan.orchestration import STAGES

    assert dagbag.import_errors == {}
    assert {f"flights.{stage}" for stage in STAGES} == set(dagbag.dag_ids)
    for dag_id, dag in dagbag.dags.items():
        assert f"pipeline:{dag_id.split('.')[0]}" in dag.tags


def test_dags_follow_house_rules(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 100, f"{dag_id} needs a doc_md"
        assert "flightplan" in dag.tags, f"{dag_id} needs the flightplan tag"
        assert dag.catchup is False, f"{dag_id} must not catch up by default"
        for task in dag.tasks:
            assert task.owner == "flightplan", f"{dag_id}.{task.task_id} owner"
            assert task.retries >= 0
        assert any(t.retries > 0 for t in dag.tasks), f"{dag_id} must retry transient failures"


def test_data_engineering_shape(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["flights.data_engineering"]
    assert set(dag.task_ids) == {"wait_for_landing", "ingest", "profile", "validate", "wrangle", "label", "split"}
    assert dag.get_task("ingest").upstream_task_ids == {"wait_for_landing"}
    assert dag.get_task("wait_for_landing").retries == 0  # its timeout fails once
    assert dag.get_task("validate").retries == 0  # a broken expectation is not transient
    assert dag.get_task("wrangle").upstream_task_ids == {"validate"}
    # The profile runs beside validation: it holds nothing up, and a failed validation still gets its profile.
    assert dag.get_task("profile").upstream_task_ids == {"ingest"}
    assert dag.get_task("profile").downstream_task_ids == set()
    assert dag.get_task("validate").upstream_task_ids == {"ingest"}
    assert [o.name for o in dag.get_task("split").outlets] == ["flights.splits"]
    assert {"start", "end", "fresh"} <= set(dag.params.keys()) and dag.params["fresh"] is False


def test_model_engineering_shape(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["flights.model_engineering"]
    chain = ["features", "tune", "train", "evaluate", "accept", "package", "register"]
    assert set(dag.task_ids) == set(chain)
    for before, after in itertools.pairwise(chain):
        assert dag.get_task(after).upstream_task_ids == {before}
    assert dag.get_task("accept").retries == 0 and dag.get_task("package").retries == 0
    assert [o.name for o in dag.get_task("register").outlets] == ["flights.challenger"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["flights.splits"]
    assert {"trials", "timeout_minutes", "window_days", "engine", "reason", "fresh"} <= set(dag.params.keys())
    assert dag.params["fresh"] is False
    assert set(dag.params.get_param("engine").schema["enum"]) == {None, "local", "spark"}
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"


@pytest.mark.parametrize("stage", ["data_engineering", "batch_inference", "monitoring"])
def test_nightly_runs_cover_the_day_that_ended(dagbag, stage: str) -> None:  # type: ignore[no-untyped-def]
    """A data interval from midnight to midnight, not the point in time Airflow 3 makes of "@daily"."""
    import pendulum
    from airflow.timetables.interval import CronDataIntervalTimetable

    declared = dagbag.dags[f"flights.{stage}"].timetable
    assert type(declared).__name__ == "CronDataIntervalTimetable"
    scheduled = CronDataIntervalTimetable(declared.expression, declared.timezone)
    interval = scheduled.infer_manual_data_interval(run_after=pendulum.datetime(2013, 7, 2, 6, tz="UTC"))
    assert (interval.start, interval.end) == (
        pendulum.datetime(2013, 7, 1, tz="UTC"),
        pendulum.datetime(2013, 7, 2, tz="UTC"),
    )


def test_monitoring_shape(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["flights.monitoring"]
    assert dag.get_task("retrain").upstream_task_ids == {"retrain_needed"}
    assert dag.get_task("retrain_needed").upstream_task_ids == {"check"}
    assert dag.get_task("retrain").trigger_dag_id == "flights.model_engineering"
    assert {"start", "end", "window_hours", "drift_share", "max_metric_drop", "min_rows"} <= set(dag.params.keys())
    assert dag.render_template_as_native_obj  # the conf reaches model_engineering as a dict


@pytest.mark.parametrize("dag_file", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_no_heavy_import_at_parse_time(dag_file: Path) -> None:
    script = (
        f"import runpy, sys\nsys.path.insert(0, {str(DAGS)!r})\n"
        f"runpy.run_path({str(dag_file)!r})\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_each_pipeline_gets_its_own_dags_and_a_broken_yaml_only_an_import_error(tmp_path: Path) -> None:
    """Pipelines side by side: each its own DAGs, assets, schedule and run limit; a YAML that does not validate
    is one import error naming the file and key, and takes no other pipeline down."""
    flights = (DAGS.parent / "include" / "pipelines" / "flights.yaml").read_text()
    (tmp_path / "flights.yaml").write_text(flights)
    snapshot = flights.replace("name: flights", "name: loans").split("\nschedule:")[0]
    snapshot = snapshot.replace("  landing: landing/{pipeline}\n", "  snapshot: {path: loans.csv, day: 2020-05-01}\n")
    (tmp_path / "loans.yaml").write_text(snapshot.replace("strategy: time", "strategy: stratified"))
    (tmp_path / "broken.yaml").write_text(
        flights.replace("name: flights", "name: broken").replace("min_rows: 100", "min_rows: -1")
    )
    script = (
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(DAGS)!r})\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        "dags = {i: {'schedule': type(d.timetable).__name__, 'runs': d.max_active_runs,"
        " 'assets': sorted(a.name for t in d.tasks for a in t.outlets)} for i, d in bag.dags.items()}\n"
        "print(json.dumps({'dags': dags, 'errors': bag.import_errors}))\n"
    )
    env = {**os.environ, "FLIGHTPLAN_PIPELINES_DIR": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert {i.split(".")[0] for i in found["dags"]} == {"flights", "loans"}
    assert found["dags"]["flights.data_engineering"]["schedule"] == "CronDataIntervalTimetable"
    assert found["dags"]["loans.data_engineering"]["schedule"] == "NullTimetable"  # a snapshot: triggered only
    assert found["dags"]["loans.data_engineering"]["assets"] == ["loans.splits"]
    assert found["dags"]["loans.model_engineering"]["assets"] == ["loans.challenger"]
    ((error_file, message),) = found["errors"].items()
    assert error_file.endswith("pipeline_configs.py")
    assert str(tmp_path / "broken.yaml") in message and "validation.min_rows" in message
