"""Airflow's own backfills through a live scheduler and API server, as a data engineer starts them: `airflow
backfill create` for two weeks of data_engineering and of monitoring, the REST API's `/backfills` to run again only
the day that failed, REST triggers of a day whose files did not change, and `airflow dags trigger` to re-run a
range from which a day's landing files were removed.

A backfill of two weeks runs one run per day, each on its own day; only its last run splits, over the whole history,
and starts the one retraining; a monitoring backfill checks each day's window; the day that failed validation is
the only one the `failed` reprocess behaviour runs again; a day run again unchanged reuses the newest split; a
day without landing files keeps its rows."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
import yaml
from flightplan.data.partitions import interval_key
from flightplan.dev.airflow_rest import AirflowApi
from flightplan.layout import Layout
from flightplan.settings import Settings

from tests.support.airflow import AIRFLOW, airflow_api, migrated_airflow, running_airflow
from tests.support.engines import postgres_database, postgres_problem, require

FIRST, LAST = date(2013, 1, 1), date(2013, 1, 14)  # the backfill's days, both included: a run each
DAYS = [FIRST + timedelta(days=n) for n in range((LAST - FIRST).days + 1)]
BROKEN = date(2013, 1, 8)  # its landing file lacks a column: validation fails its run
REMOVED = date(2013, 1, 5)  # its landing files are deleted before a re-run of the range around it
DATA, MODEL, MONITORING = "flights.data_engineering", "flights.model_engineering", "flights.monitoring"
pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def airflow_env(
    settings: Settings, replayed: dict[str, int], spark_connect: dict[str, str]
) -> Iterator[dict[str, str]]:
    """Airflow's metadata on PostgreSQL, as in production: on SQLite, a backfill created while the scheduler
    writes can fail on the database's lock, and Airflow then deletes runs the scheduler may have started."""
    require("PostgreSQL", postgres_problem())
    with postgres_database("airflow_backfill") as url:
        yield migrated_airflow(dataclasses.replace(settings, airflow_database_url=url), **spark_connect)


@pytest.fixture(scope="module")
def backfill_env(airflow_env: dict[str, str], settings: Settings, tmp_path_factory: Any) -> dict[str, str]:
    """The flights pipeline with a small search and no absolute acceptance thresholds (set for a year of data),
    on the local engine below a million rows (two weeks of flights are about thirteen thousand), with the scheduler
    creating runs from asset events."""
    pipelines = tmp_path_factory.mktemp("pipelines-backfill")
    config = yaml.safe_load((settings.pipelines_dir / "flights.yaml").read_text())
    config["model"]["tuning"].update({"trials": 2, "num_boost_round": 40})
    config["model"]["acceptance"].update({"minimum": {}, "maximum": {}, "champion_margin": -1.0})
    # The scheduler's own run of yesterday finds no landing files of 2026 and fails at once instead of waiting.
    config["schedule"].update({"landing_timeout_minutes": 0.01, "landing_poke_seconds": 0.1})
    (pipelines / "flights.yaml").write_text(yaml.safe_dump(config))
    return {
        **airflow_env,
        "FLIGHTPLAN_PIPELINES_DIR": str(pipelines),
        "FLIGHTPLAN_LOCAL_ENGINE_ROWS": "1000000",
        "FLIGHTPLAN_INGEST_ENGINE": "local",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
    }


@pytest.fixture(scope="module")
def landed(layout: Layout) -> dict[str, int]:
    """The landing files of the backfill's days, one day's without the dep_delay column."""
    from flightplan.dev.replay import replay

    rows = replay(layout, FIRST, LAST + timedelta(days=1))
    for path in (layout.landing / BROKEN.isoformat()).glob("*.csv"):
        header, *lines = path.read_text().splitlines()
        dropped = header.split(",").index("dep_delay")
        path.write_text(
            "\n".join(",".join(v for i, v in enumerate(line.split(",")) if i != dropped) for line in [header, *lines])
            + "\n"
        )
    return rows


@pytest.fixture(scope="module")
def api(backfill_env: dict[str, str], landed: dict[str, int]) -> Iterator[AirflowApi]:
    with running_airflow(backfill_env) as base:
        client = airflow_api(base, backfill_env)
        for dag_id in (DATA, MODEL, MONITORING):
            client.wait_until_parsed(dag_id)
            client.set_paused(dag_id, False)
        yield client
        client.close()


def by_day(runs: list[dict[str, Any]]) -> dict[date, dict[str, Any]]:
    return {date.fromisoformat(run["logical_date"][:10]): run for run in runs}


def create_backfill(env: dict[str, str], dag_id: str) -> None:
    """`airflow backfill create` over the backfill's days, one run at a time, as a user types it."""
    command = [AIRFLOW, "backfill", "create", "--dag-id", dag_id, "--from-date", str(FIRST), "--to-date", str(LAST)]
    done = subprocess.run([*command, "--max-active-runs", "1"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def wait_for_runs(api: AirflowApi, dag_id: str, count: int, timeout: float = 900) -> list[dict[str, Any]]:
    """The DAG's backfill runs once ``count`` of them have finished."""
    import time

    deadline = time.monotonic() + timeout
    while (
        len(finished := [r for r in api.runs(dag_id, "backfill") if r["state"] in ("success", "failed")]) < count
        and time.monotonic() < deadline
    ):
        time.sleep(5)
    return finished


def curated_rows(layout: Layout, day: date) -> list[dict[str, Any]]:
    folder = layout.dataset("curated") / f"ds={day.isoformat()}"
    rows = pads.dataset(str(folder)).to_table().to_pylist()
    return sorted(rows, key=lambda row: json.dumps(row, sort_keys=True, default=str))


def test_a_backfill_runs_each_day_and_retrains_once_on_the_whole_history(
    api: AirflowApi, backfill_env: dict[str, str], layout: Layout, landed: dict[str, int]
) -> None:
    create_backfill(backfill_env, DATA)
    runs = by_day(wait_for_runs(api, DATA, len(DAYS)))
    assert sorted(runs) == DAYS
    assert {day: run["state"] for day, run in runs.items() if run["state"] != "success"} == {BROKEN: "failed"}
    for day, run in runs.items():
        assert (run["data_interval_start"][:10], run["data_interval_end"][:10]) == (str(day), str(day + timedelta(1)))
        if day != BROKEN:  # each on its own day: its manifest, with the rows its landing files hold
            ingested = json.loads(layout.manifest("ingest", interval_key(day, day + timedelta(1))).read_text())
            assert ingested["rows"] == {str(day): landed[str(day)]}, day
    splits = {day: api.task_states(DATA, run["dag_run_id"])["split"] for day, run in runs.items()}
    assert splits.pop(LAST) == "success" and splits.pop(BROKEN) == "upstream_failed"
    assert set(splits.values()) == {"skipped"}, splits
    reason = api.task_log(DATA, runs[FIRST]["dag_run_id"], "split")
    assert any("later run(s) of this DAG are queued" in line for line in reason), reason

    training = api.wait_for_new_run(MODEL, runs[FIRST]["run_after"])
    assert api.wait_for_run(MODEL, training["dag_run_id"]) == "success", api.task_states(MODEL, training["dag_run_id"])
    assert [run["dag_run_id"] for run in api.runs(MODEL)] == [training["dag_run_id"]]
    latest = json.loads((layout.splits / "latest.json").read_text())
    window = json.loads(Path(latest["manifest"]).read_text())["window"]
    assert window == {"start": str(FIRST), "end": str(LAST + timedelta(1))}, window


def test_a_second_identical_training_reuses_tuning_and_training_and_a_changed_one_trains(api: AirflowApi) -> None:
    """Over the REST API, on the split the backfill made: the same config reuses the first run's tuning and
    booster (its task logs say so); three trials instead of two tune and train again."""

    def trained(conf: dict[str, Any]) -> dict[str, list[str]]:
        run_id = api.trigger(MODEL, conf)["dag_run_id"]
        assert api.wait_for_run(MODEL, run_id) == "success", api.task_states(MODEL, run_id)
        return {task: api.task_log(MODEL, run_id, task) for task in ("tune", "train")}

    def reused(lines: list[str]) -> bool:
        return any("cache hit: run" in line and "had the same data, config and code" in line for line in lines)

    again = trained({})
    assert reused(again["tune"]) and reused(again["train"]), again
    changed = trained({"trials": 3})
    assert not reused(changed["tune"]) and not reused(changed["train"])
    assert any(line.startswith("trial 0:") for line in changed["tune"]), changed["tune"]
    api.set_paused(MODEL, True)  # the later tests' splits start no retraining


def test_the_failed_reprocess_behaviour_runs_again_only_the_day_that_failed(
    api: AirflowApi, layout: Layout, landed: dict[str, int]
) -> None:
    from flightplan.dev.replay import replay

    before = by_day(api.runs(DATA, "backfill"))
    replay(layout, BROKEN, BROKEN + timedelta(days=1))  # the feed sends the day again, whole
    backfill = api.backfill(DATA, FIRST, LAST, reprocess="failed")
    api.wait_for_backfill(backfill["id"])
    after = by_day(api.runs(DATA, "backfill"))
    rerun = {day for day in after if after[day]["end_date"] != before[day]["end_date"]}
    assert rerun == {BROKEN}
    assert after[BROKEN]["state"] == "success"
    assert api.task_states(DATA, after[BROKEN]["dag_run_id"])["split"] == "success"  # no run queued after it


def test_a_rerun_of_unchanged_days_reuses_the_newest_split_and_fresh_splits_again(
    api: AirflowApi, layout: Layout
) -> None:
    """Over the REST API (``logical_date: null``), the last day again with its landing files unchanged: its
    labeled rows are those the newest split was made of, so the split is skipped as a cache hit, with no splits
    event (no retraining); the ``fresh`` Param splits."""
    latest = (layout.splits / "latest.json").read_text()
    conf = {"start": str(LAST), "end": str(LAST + timedelta(1))}
    again = api.trigger(DATA, conf)["dag_run_id"]
    assert api.wait_for_run(DATA, again) == "success", api.task_states(DATA, again)
    assert api.task_states(DATA, again)["split"] == "skipped"
    assert any("cache hit:" in line and "no retraining" in line for line in api.task_log(DATA, again, "split"))
    events = api.http.get("/assets/events", params={"source_dag_id": DATA, "source_run_id": again})
    assert events.json()["asset_events"] == []
    assert (layout.splits / "latest.json").read_text() == latest
    fresh = api.trigger(DATA, {**conf, "fresh": True})["dag_run_id"]
    assert api.wait_for_run(DATA, fresh) == "success", api.task_states(DATA, fresh)
    assert api.task_states(DATA, fresh)["split"] == "success"


def test_a_rerun_range_keeps_the_rows_of_a_day_whose_landing_files_were_removed(
    api: AirflowApi, backfill_env: dict[str, str], layout: Layout
) -> None:
    kept = curated_rows(layout, REMOVED)
    for path in (layout.landing / REMOVED.isoformat()).iterdir():
        path.unlink()
    conf = json.dumps({"start": str(REMOVED - timedelta(1)), "end": str(REMOVED + timedelta(2))})
    triggered = subprocess.run(
        [AIRFLOW, "dags", "trigger", DATA, "--conf", conf, "--output", "json"],
        env=backfill_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    printed = [line for line in triggered.stdout.splitlines() if line.startswith("[{")]  # after Airflow's warnings
    run_id = json.loads(printed[-1])[0]["dag_run_id"]
    assert api.wait_for_run(DATA, run_id) == "success", api.task_states(DATA, run_id)
    assert curated_rows(layout, REMOVED) == kept
    key = interval_key(REMOVED - timedelta(1), REMOVED + timedelta(2))
    assert json.loads(layout.manifest("ingest", key).read_text())["days_kept"] == [str(REMOVED)]
    assert any("their curated rows are kept" in line for line in api.task_log(DATA, run_id, "ingest"))


def test_a_backfill_of_monitoring_checks_each_day(
    api: AirflowApi, backfill_env: dict[str, str], layout: Layout, settings: Settings
) -> None:
    """Each run checks its own day's window (a nightly run's), whatever time it runs at."""
    from flightplan.model.registry import CHALLENGER, CHAMPION, alias_version
    from flightplan.tracking import client

    name = layout.config.registered_model
    retrained = alias_version(settings, name, CHALLENGER)
    assert retrained is not None
    client(settings).set_registered_model_alias(name, CHAMPION, retrained)
    create_backfill(backfill_env, MONITORING)
    runs = by_day(wait_for_runs(api, MONITORING, len(DAYS)))
    assert sorted(runs) == DAYS
    assert {run["state"] for run in runs.values()} == {"success"}
    for day in runs:
        summary = layout.reports("monitoring") / f"{day:%Y%m%d}T000000-{day + timedelta(1):%Y%m%d}T000000"
        window = json.loads((summary / "summary.json").read_text())["window"]
        assert (window["start"][:10], window["end"][:10]) == (str(day), str(day + timedelta(1)))
