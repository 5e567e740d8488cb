"""The rule that turns one DAG run into one pipeline's job: which pipeline, which interval, which Params."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from flightplan import orchestration
from flightplan.config import PipelineConfig, load_pipeline, scan_pipelines
from flightplan.orchestration import JobError, RunFacts
from flightplan.settings import PACKAGE_PIPELINES_DIR


@pytest.fixture(scope="module")
def flights() -> PipelineConfig:
    return load_pipeline("flights", PACKAGE_PIPELINES_DIR)


@pytest.fixture(scope="module")
def snapshot(flights: PipelineConfig) -> PipelineConfig:
    from flightplan.config import SnapshotSpec

    shot = SnapshotSpec(path="x.csv", day=date(2020, 5, 1))
    return flights.model_copy(update={"source": flights.source.model_copy(update={"snapshot": shot})})


def facts(**given: object) -> RunFacts:
    values: dict = {
        "pipeline": "flights",
        "dag_id": "flights.data_engineering",
        "run_id": "manual__1",
        "task_id": "ingest",
        "run_type": "manual",
    }
    values.update(given)
    return RunFacts(**values)


def test_ids_name_the_pipeline_and_refuse_unknown_stages() -> None:
    assert orchestration.dag_id("loans", "model_engineering") == "loans.model_engineering"
    assert orchestration.asset_name("loans", "splits") == "loans.splits"
    assert orchestration.asset_uri("loans", "champion") == "file:///flightplan/loans/champion"
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        orchestration.dag_id("loans", "train")


def test_params_win_over_the_data_interval(flights: PipelineConfig, tmp_path: Path) -> None:
    interval = (datetime(2013, 7, 1, tzinfo=UTC), datetime(2013, 7, 2, tzinfo=UTC))
    run = facts(params={"start": "2013-01-01", "end": "2013-01-04"}, data_interval=interval)
    assert orchestration.data_interval(run, flights, tmp_path) == (date(2013, 1, 1), date(2013, 1, 4))
    assert orchestration.data_interval(facts(data_interval=interval), flights, tmp_path) == (
        date(2013, 7, 1),
        date(2013, 7, 2),
    )


def test_half_or_backwards_dates_are_refused(flights: PipelineConfig, tmp_path: Path) -> None:
    with pytest.raises(JobError, match="give both 'start' and 'end'"):
        orchestration.data_interval(facts(params={"start": "2013-01-01"}), flights, tmp_path)
    with pytest.raises(JobError, match="must come before"):
        orchestration.data_interval(facts(params={"start": "2013-01-04", "end": "2013-01-01"}), flights, tmp_path)


def test_a_snapshot_needs_no_dates(snapshot: PipelineConfig, tmp_path: Path) -> None:
    """A REST run with `logical_date: null` has no data interval: a snapshot is its own day."""
    assert orchestration.data_interval(facts(), snapshot, tmp_path) == (date(2020, 5, 1), date(2020, 5, 2))


def test_an_undated_daily_run_takes_the_newest_landed_day(flights: PipelineConfig, tmp_path: Path) -> None:
    with pytest.raises(JobError, match=f"nothing has landed in {tmp_path}"):
        orchestration.data_interval(facts(), flights, tmp_path)
    for name in ("2013-01-02", "2013-01-10", "not-a-day", "2013-13-01"):
        (tmp_path / name).mkdir()
    assert orchestration.data_interval(facts(), flights, tmp_path) == (date(2013, 1, 10), date(2013, 1, 11))


def test_a_day_has_landed_only_with_a_visible_file(tmp_path: Path) -> None:
    day = date(2013, 1, 2)
    assert not orchestration.day_landed(tmp_path, day)
    (tmp_path / "2013-01-02").mkdir()
    (tmp_path / "2013-01-02" / "part.csv.partial").write_text("")
    (tmp_path / "2013-01-02" / ".hidden.csv").write_text("")
    assert orchestration.day_landed(tmp_path, day)  # a name not starting with '.' or '_' counts
    (tmp_path / "2013-01-02" / "part.csv.partial").unlink()
    assert not orchestration.day_landed(tmp_path, day)


def test_the_model_job_takes_its_own_pipelines_newest_event() -> None:
    run = facts(
        dag_id="flights.model_engineering",
        run_type="asset_triggered",
        params={"trials": 3, "engine": None, "reason": None},
        events=[{"pipeline": "flights", "manifest": "/old.json"}, {"pipeline": "flights", "manifest": "/new.json"}],
    )
    job = orchestration.model_job(run)
    assert (job.pipeline, job.split_manifest, job.reason) == ("flights", "/new.json", "new splits")
    assert job.overrides == {"model.tuning.trials": 3}
    assert job.context.dag_id == "flights.model_engineering"


def test_an_event_of_another_pipeline_is_refused() -> None:
    """A queued event of pipeline A never decides what B's run works on."""
    run = facts(events=[{"pipeline": "loans", "manifest": "/loans.json"}])
    with pytest.raises(JobError, match=r"events of pipeline\(s\) \['loans'\]"):
        orchestration.model_job(run)


def test_deploy_job_from_the_event_else_from_the_params() -> None:
    by_event = orchestration.deploy_job(facts(events=[{"pipeline": "flights", "version": "7"}]))
    assert (by_event.version, by_event.reason) == ("7", "new challenger")
    by_hand = orchestration.deploy_job(facts(params={"version": "3", "reason": "hotfix"}))
    assert (by_hand.version, by_hand.reason) == ("3", "hotfix")
    assert orchestration.rollback_job(facts(params={"reason": None})).reason == "manual rollback"


def test_monitoring_window_is_the_data_interval_of_any_run_that_has_one(flights: PipelineConfig) -> None:
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    interval = (datetime(2013, 7, 1, tzinfo=UTC), datetime(2013, 7, 2, tzinfo=UTC))
    for run_type in ("scheduled", "backfill", "manual"):
        job = orchestration.monitor_job(facts(run_type=run_type, data_interval=interval), flights, now)
        assert (job.start, job.end) == interval
    last = orchestration.monitor_job(facts(params={"window_hours": 6, "drift_share": 0.3}), flights, now)
    assert (last.start, last.end) == (datetime(2026, 1, 2, 6, tzinfo=UTC), now)
    assert last.overrides == {"monitoring.window_hours": 6, "monitoring.drift_share": 0.3}
    given = orchestration.monitor_job(
        facts(params={"start": "2013-07-01T00:00:00", "end": "2013-07-01T06:00:00+00:00"}), flights, now
    )
    assert (given.start, given.end) == (interval[0], datetime(2013, 7, 1, 6, tzinfo=UTC))


def test_what_waits_in_airflow_reaches_the_retrain_decision_and_the_split(flights: PipelineConfig) -> None:
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    backfilled = facts(run_type="backfill", data_interval=(datetime(2013, 7, 1, tzinfo=UTC), now))
    from flightplan.monitoring.policy import Waiting

    queued = Waiting(later_checks=3, retrainings=1)
    assert orchestration.monitor_job(backfilled, flights, now, queued).waiting == queued
    assert orchestration.monitor_job(backfilled, flights, now).waiting == Waiting(0, 0)
    assert orchestration.split_left_to_later_runs(0) is None
    left = orchestration.split_left_to_later_runs(29)
    assert left is not None and left.startswith("29 later run(s) of this DAG are queued")


def test_scan_keeps_the_good_pipelines_and_names_the_broken_key(tmp_path: Path) -> None:
    (tmp_path / "flights.yaml").write_text((PACKAGE_PIPELINES_DIR / "flights.yaml").read_text())
    broken = (PACKAGE_PIPELINES_DIR / "flights.yaml").read_text().replace("strategy: time", "strategy: sideways")
    (tmp_path / "broken.yaml").write_text(broken.replace("name: flights", "name: broken"))
    (tmp_path / "renamed.yaml").write_text((PACKAGE_PIPELINES_DIR / "flights.yaml").read_text())
    scan = scan_pipelines(tmp_path)
    assert list(scan.configs) == ["flights"]
    assert "split.strategy" in scan.errors[str(tmp_path / "broken.yaml")]
    assert "differs from the file's name 'renamed'" in scan.errors[str(tmp_path / "renamed.yaml")]


def test_schedule_follows_the_data_cron_unless_turned_off(flights: PipelineConfig) -> None:
    from flightplan.config import ScheduleSpec

    assert flights.schedule.cron("monitoring") == flights.schedule.cron("data") == "0 0 * * *"
    assert ScheduleSpec(data="@daily", batch_inference="none").cron("batch_inference") is None
    assert ScheduleSpec().cron("monitoring") is None
    with pytest.raises(ValueError, match="'every night' is not a cron expression"):
        ScheduleSpec(data="every night")
