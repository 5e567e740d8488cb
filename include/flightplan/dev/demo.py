"""The loop `make demo` runs on a pipeline's demo data, through the running stack (`flightplan up`).

1. The year's daily drops land; data_engineering ingests the first half (`airflow dags test`).
2. Its splits asset starts model_engineering in the scheduler; the challenger asset starts deployment,
   which promotes the first champion and reloads the service.
3. The second half is ingested with model_engineering paused, so that the retraining that follows is the
   one monitoring asks for, not the nightly one new splits would start.
4. The second half is sent to the inference API as traffic, in time order, with the true labels sent back.
5. monitoring checks the traffic against the champion's training data and decides; when it retrains, the
   challenger goes through the acceptance gate and the deployment DAG like any other, and the service
   ends up serving whatever the gates chose.

Every step is a real DAG run in the Airflow UI and a run in MLflow; the summary says where to look."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flightplan.data.partitions import interval_key
from flightplan.dev.airflow_rest import ADMIN, PASSWORDS_FILE, AirflowApi, admin_password
from flightplan.layout import Layout
from flightplan.manifests import (
    DeploymentDecision,
    IngestManifest,
    LabelManifest,
    LatestSplit,
    MonitoringSummary,
    SplitManifest,
    WrangleManifest,
)
from flightplan.orchestration import dag_id
from flightplan.settings import Settings, api_token, token_file

if TYPE_CHECKING:
    from flightplan.ui.views import Overview

DEMO_STAGES = ("data_engineering", "model_engineering", "deployment", "monitoring")
FAILED_LOG_LINES = 20  # of each failed task's log, in the error a failed run raises


@dataclass(frozen=True)
class DemoPlan:
    pipeline: str
    start: date  # first day of the first half
    middle: date  # first day of the second half (the traffic)
    end: date  # day after the last day


@dataclass
class DemoRecord:
    """What happened, for the summary: each DAG run in order, and the monitoring verdict."""

    runs: list[tuple[str, str, str]] = field(default_factory=list)  # dag_id, run_id, state
    ingested: list[tuple[date, date]] = field(default_factory=list)  # the intervals data_engineering ran on
    monitoring: MonitoringSummary | None = None
    traffic: dict[str, int] | None = None
    started: float = field(default_factory=time.monotonic)


class Progress:
    """One line per step with its duration, and a line whenever a task of a followed run changes state."""

    def __init__(self, write: Callable[[str], None] = print) -> None:
        self.write = write
        self._states: dict[str, str | None] = {}

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        self._states = {}
        self.write(f"▶ {title}")
        yield
        self.write(f"  done in {_duration(time.monotonic() - started)}")

    def tasks(self, states: dict[str, str | None]) -> None:
        changed = [(task, state) for task, state in states.items() if state and state != self._states.get(task)]
        # Between two polls a task may end and the next start: the ends are told first.
        for task, state in sorted(changed, key=lambda change: change[1] in ("queued", "running", "scheduled")):
            self.write(f"    {task}: {state}")
        self._states = dict(states)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


class DemoFailed(RuntimeError):
    """A step of the loop did not end as it must; the message says which and where its log is."""


def dags_test(
    settings: Settings, env: dict[str, str], api: AirflowApi, progress: Progress, dag_id: str, conf: dict[str, Any]
) -> dict[str, Any]:
    """One in-process run of a DAG (`airflow dags test`), its tasks' states told as they change and its output
    kept under ``<home>/stack/``; returns the run as the API records it."""
    from flightplan.dev.stack import stack_dir

    log_path = stack_dir(settings) / f"demo-{dag_id}-{conf.get('start', '')}-{conf.get('end', '')}.log"
    started = datetime.now(UTC).isoformat()
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("airflow")), "dags", "test", dag_id, "-c", json.dumps(conf)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    run = None
    while process.poll() is None:
        time.sleep(3)
        run = run or api.newest_run(dag_id, after=started)
        if run is not None:
            progress.tasks(api.task_states(dag_id, run["dag_run_id"]))
    output = log_path.read_text(errors="replace")
    run = api.newest_run(dag_id, after=started)
    if process.returncode != 0 or "state=failed" in output or run is None:
        raise DemoFailed(f"{dag_id} {conf} failed; its log is {log_path}:\n{output[-3000:]}")
    progress.tasks(api.task_states(dag_id, run["dag_run_id"]))
    return run


def follow(api: AirflowApi, progress: Progress, record: DemoRecord, dag_id: str, run: dict[str, Any]) -> str:
    state = api.wait_for_run(dag_id, run["dag_run_id"], timeout=1800, progress=progress.tasks)
    record.runs.append((dag_id, run["dag_run_id"], state))
    return state


def require(state: str, dag_id: str, api: AirflowApi, run: dict[str, Any]) -> None:
    """Raises DemoFailed, with the end of each failed task's log, unless the run succeeded."""
    if state != "success":
        states = api.task_states(dag_id, run["dag_run_id"])
        logs = [
            f"\n--- the end of {task_id}'s log ---\n"
            + "\n".join(api.task_log(dag_id, run["dag_run_id"], task_id)[-FAILED_LOG_LINES:])
            for task_id, task_state in states.items()
            if task_state == "failed"
        ]
        raise DemoFailed(f"{dag_id} run {run['dag_run_id']} ended {state}: {states}" + "".join(logs))


def run_demo(settings: Settings, layout: Layout, plan: DemoPlan, env: dict[str, str], progress: Progress) -> DemoRecord:
    """The whole loop against the running stack; returns what happened."""
    loop = DemoLoop(settings, layout, plan, env, progress, AirflowApi(settings.airflow_url, settings.airflow_home))
    try:
        loop.land_and_wait_for_dags()
        loop.first_champion()
        loop.ingest_second_half()
        window = loop.send_traffic()
        check = loop.monitor(*window)
        if loop.record.monitoring and loop.record.monitoring.decision.retrain:
            loop.retrain(check)
    finally:
        loop.api.close()
    return loop.record


@dataclass
class DemoLoop:
    """One run of the loop: the handles each step uses, and the record the steps fill."""

    settings: Settings
    layout: Layout
    plan: DemoPlan
    env: dict[str, str]
    progress: Progress
    api: AirflowApi
    record: DemoRecord = field(default_factory=DemoRecord)

    def dag(self, stage: str) -> str:
        return dag_id(self.plan.pipeline, stage)

    def follow(self, stage: str, run: dict[str, Any]) -> str:
        return follow(self.api, self.progress, self.record, self.dag(stage), run)

    def require(self, stage: str, run: dict[str, Any]) -> None:
        require(self.follow(stage, run), self.dag(stage), self.api, run)

    def land_and_wait_for_dags(self) -> None:
        from flightplan.dev.replay import replay

        plan = self.plan
        with self.progress.step(f"the daily drops of {plan.start} .. {plan.end} land in {self.layout.landing}"):
            counts = replay(self.layout, plan.start, plan.end)
            self.progress.write(f"  {sum(counts.values()):,} rows in {len(counts)} daily folders")
        for stage in DEMO_STAGES:
            self.api.wait_until_parsed(self.dag(stage))
        for stage in ("model_engineering", "deployment"):
            self.api.set_paused(self.dag(stage), False)

    def ingest(self, start: date, end: date) -> dict[str, Any]:
        """data_engineering on [start, end) in this process (`airflow dags test`)."""
        conf = {"start": str(start), "end": str(end)}
        run = dags_test(self.settings, self.env, self.api, self.progress, self.dag("data_engineering"), conf)
        self.record.runs.append((self.dag("data_engineering"), run["dag_run_id"], run["state"]))
        self.record.ingested.append((start, end))
        return run

    def first_champion(self) -> None:
        plan = self.plan
        with self.progress.step(f"data_engineering {plan.start} .. {plan.middle} (airflow dags test)"):
            ingested = self.ingest(plan.start, plan.middle)
        with self.progress.step("model_engineering, started by the splits asset"):
            training = self.api.wait_for_new_run(self.dag("model_engineering"), ingested["run_after"])
            self.require("model_engineering", training)
        with self.progress.step("deployment, started by the challenger asset: the first champion"):
            deployment = self.api.wait_for_new_run(self.dag("deployment"), training["run_after"])
            self.require("deployment", deployment)

    def ingest_second_half(self) -> None:
        plan = self.plan
        with self.progress.step(f"data_engineering {plan.middle} .. {plan.end}, nightly retraining paused meanwhile"):
            self.api.set_paused(self.dag("model_engineering"), True)
            try:
                self.ingest(plan.middle, plan.end)
            finally:
                self.api.set_paused(self.dag("model_engineering"), False)

    def send_traffic(self) -> tuple[datetime, datetime]:
        """The second half through the inference API with its true labels; returns the window it was sent in."""
        from flightplan.dev.replay import replay_traffic

        plan, url = self.plan, self.settings.service_url
        with self.progress.step(f"traffic: {plan.middle} .. {plan.end} through {url}, true labels back"):
            start = datetime.now(UTC).replace(microsecond=0)
            traffic = self.record.traffic = replay_traffic(self.layout, plan.middle, plan.end, batch_rows=1000)
            end = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
            self.progress.write(f"  {traffic['answered']:,} answered, {traffic['labeled']:,} true labels sent back")
        return start, end

    def monitor(self, start: datetime, end: datetime) -> dict[str, Any]:
        """A monitoring run of the traffic window; returns the run."""
        from flightplan.monitoring.stages import MonitorJob

        with self.progress.step(f"monitoring of the traffic window {start:%H:%M:%S} .. {end:%H:%M:%S} UTC"):
            self.api.set_paused(self.dag("monitoring"), False)
            conf = {"pipeline": self.plan.pipeline, "start": start.isoformat(), "end": end.isoformat()}
            check = self.api.trigger(self.dag("monitoring"), conf)
            self.require("monitoring", check)
            folder = self.layout.reports("monitoring") / MonitorJob(self.plan.pipeline, start, end).key
            self.record.monitoring = MonitoringSummary.read(folder / MonitoringSummary.FILE)
            self.progress.write(f"  decision: {self.record.monitoring.decision.outcome}")
        return check

    def retrain(self, check: dict[str, Any]) -> None:
        """The retraining monitoring asked for, then the deployment its challenger starts."""
        with self.progress.step("model_engineering, started by monitoring"):
            training = self.api.wait_for_new_run(self.dag("model_engineering"), check["run_after"])
            state = self.follow("model_engineering", training)
        if state == "success":
            with self.progress.step("deployment of the new challenger: the gates decide"):
                deployment = self.api.wait_for_new_run(self.dag("deployment"), training["run_after"])
                self.follow("deployment", deployment)


def summarize(settings: Settings, layout: Layout, record: DemoRecord, write: Callable[[str], None] = print) -> None:
    """What the loop did: its runs, the traffic, the monitoring verdict and the gate's comparison."""
    config = layout.config
    write(f"\n{config.name}: the loop took {_duration(time.monotonic() - record.started)}")
    for name, run_id, state in record.runs:
        write(f"  {name:<32} {state:<8} {run_id}")
    for start, end in record.ingested:
        _summarize_data(layout, start, end, write)
    if record.ingested:
        _summarize_split(layout, write)
    if record.traffic is not None:
        write(
            f"\n  traffic       {record.traffic['answered']:,} predictions logged, "
            f"{record.traffic['labeled']:,} with their true label"
        )
    if record.monitoring is not None:
        _summarize_check(record.monitoring, write)
    for name, run_id, _ in record.runs:
        if name == dag_id(config.name, "model_engineering"):
            _summarize_training(settings, layout, run_id, write)
        if name == dag_id(config.name, "deployment"):
            _summarize_gate(layout, run_id, write)


def _summarize_check(check: MonitoringSummary, write: Callable[[str], None]) -> None:
    """The monitoring verdict: drift, live performance against the test split's, the decision."""
    metric = check.primary_metric
    drifted = ", ".join(check.drifted_columns()) or "none"
    output = ", ".join(f"{c.column} {c.method} {c.score:.3f}" for c in check.prediction_drift)
    write(f"  monitoring    {check.rows:,} rows against version {check.model_version}'s training data")
    write(f"  drift         {check.drift_share:.0%} of the features and the output: {drifted}")
    write(f"  output drift  {output or '-'}")
    live, champion_test = check.performance.get(metric), check.champion_test_score
    if live is not None and champion_test is not None:
        write(f"  {metric:<13} {live:.4f} on the traffic's ground truth, {champion_test:.4f} on its own test split")
    write(f"  decision      {check.decision.outcome}: {check.decision.reason}")
    write(f"  report        {check.reports.get('drift_html', '-')}")


def _summarize_gate(layout: Layout, dag_run_id: str, write: Callable[[str], None]) -> None:
    """The deployment gate of one run, when it compared two versions."""
    path = layout.reports("deployment") / f"{dag_run_id}.json"
    if not path.exists():
        return
    decision, metric = DeploymentDecision.read(path), layout.config.primary_metric
    candidate = (decision.candidate_metrics or {}).get(metric)
    champion = (decision.champion_metrics or {}).get(metric)
    if candidate is None or champion is None or not decision.days:
        return
    write(
        f"  gate          version {decision.candidate} {candidate:.4f} against champion "
        f"{decision.champion} {champion:.4f} ({metric} on {decision.rows:,} rows of "
        f"{decision.days[0]} .. {decision.days[-1]}): " + ("promoted" if decision.accepted else "refused")
    )


def _summarize_data(layout: Layout, start: date, end: date, write: Callable[[str], None]) -> None:
    """What data_engineering made of one interval: rows at each stage and what it set aside."""
    key = interval_key(start, end)
    ingest = IngestManifest.read(layout.manifest("ingest", key))
    wrangle = WrangleManifest.read(layout.manifest("wrangle", key))
    label = LabelManifest.read(layout.manifest("label", key))
    write(
        f"  data          {start} .. {end}: {ingest.rows_total:,} rows from {len(ingest.files)} files "
        f"({ingest.quarantined_total:,} quarantined), {wrangle.quarantined_total:,} duplicates set aside, "
        f"{label.quarantined_total:,} without a label, {label.rows_total:,} labeled"
    )


def _summarize_split(layout: Layout, write: Callable[[str], None]) -> None:
    """The newest split: the sides' sizes and where its manifest is."""
    from flightplan.data.split import SPLITS

    latest = LatestSplit.read(layout.splits / "latest.json")
    sides = SplitManifest.read(Path(latest.manifest)).sides
    write(
        f"  split         {latest.split_id}: "
        + ", ".join(f"{side} {sides[side].rows:,}" for side in SPLITS)
        + f" ({latest.manifest})"
    )


def _summarize_training(settings: Settings, layout: Layout, dag_run_id: str, write: Callable[[str], None]) -> None:
    """The acceptance gate of one model_engineering run: its model and the champion on the same test set."""
    from flightplan.tracking import client, experiment_id, model_experiment

    config, metric = layout.config, layout.config.primary_metric
    mlflow_client = client(settings)
    found = mlflow_client.search_runs(
        [experiment_id(mlflow_client, settings, model_experiment(config))],
        filter_string=f"tags.`airflow.run_id` = '{dag_run_id}' and tags.`flightplan.role` = 'model'",
        max_results=1,
    )
    if not found:
        return
    run = found[0]
    champion = run.data.metrics.get(f"champion_test_{metric}")
    against = f"the champion's {champion:.4f} on the same test set" if champion is not None else "no champion yet"
    write(
        f"  trained       version {run.data.tags.get('flightplan.registered_version', '-')}: test {metric} "
        f"{run.data.metrics.get(f'test_{metric}', float('nan')):.4f}, {against}: "
        f"{run.data.tags.get('flightplan.verdict', '-')}"
    )


def summarize_models(settings: Settings, layout: Layout, write: Callable[[str], None] = print) -> None:
    """The registry's aliases with their test scores, a few recent records through the served champion, and
    where each UI is."""
    from flightplan.model.registry import CHAMPION, alias_version
    from flightplan.ui.views import overview

    metric = layout.config.primary_metric
    found = overview(layout)
    write("")
    for card in found.versions:
        score = card.metrics.get(metric, float("nan"))
        write(f"  {card.alias:<13} version {card.version}: test {metric} {score:.4f}  {card.reason}")
    if alias_version(settings, layout.config.registered_model, CHAMPION) is not None:
        _summarize_served(settings, layout, write)
    _summarize_places(settings, layout, found, write)


def _summarize_served(settings: Settings, layout: Layout, write: Callable[[str], None]) -> None:
    """Three recent records through the live API, beside their true labels."""
    import httpx

    from flightplan.deployment.stages import recent_records
    from flightplan.serving.client import service_client

    config = layout.config
    recent, records = recent_records(layout, 3)
    try:
        with service_client(settings) as http:
            response = http.post(f"/v1/{config.name}/predict/batch", json={"records": records})
        response.raise_for_status()
    except httpx.HTTPError as err:
        write(f"  the service at {settings.service_url} does not answer ({err}): `flightplan up` starts it")
        return
    answer = response.json()
    write(f"  served        version {answer['model_version']} at {settings.service_url}; three recent records:")
    truth = recent[config.label.name].tolist()
    for record, prediction, label in zip(records, answer["predictions"], truth, strict=True):
        shown = ", ".join(f"{k}={record[k]}" for k in list(record)[:4])
        probability = prediction["probability"]
        sure = f" (p={probability:.3f})" if probability is not None else ""
        write(f"    {shown} → {prediction['prediction']}{sure}, true {label}")


def _summarize_places(settings: Settings, layout: Layout, found: Overview, write: Callable[[str], None]) -> None:
    """Where each UI, report and secret of the stack is."""
    from flightplan.ui.views import data_docs_index

    config = layout.config
    password = admin_password(settings.airflow_home)
    write(f"\n  Airflow UI    {settings.airflow_url}  (user {ADMIN}, password {password})")
    write(f"                the password is kept in {settings.airflow_home / PASSWORDS_FILE}")
    write(f"  Models page   {settings.airflow_url}/flightplan/  (Browse → Models in the Airflow UI)")
    write(f"  MLflow UI     {settings.mlflow_ui_url}")
    for title, url in found.experiments.items():
        write(f"    {title:<18} {url}")
    write(f"    {'registry':<18} {settings.mlflow_ui_url.rstrip('/')}/#/models/{config.registered_model}")
    write(f"  API docs      {settings.service_url}/docs  (Authorize with the predict token {api_token(settings)})")
    write(f"                the tokens of predict, feedback and admin are kept in {token_file(settings).parent}")
    write(f"  reports       {settings.reports_root / config.name}")
    if found.profiles:
        write(f"    profile       {settings.reports_root / found.profiles[0]}")
    if found.data_docs:
        write(f"    Data Docs     {data_docs_index(settings)}")
    reports = found.checks[0].reports if found.checks else {}
    for kind, path in reports.items():
        if kind.endswith("_html"):
            write(f"    {kind.removesuffix('_html'):<13} {settings.reports_root / path}")
    write("  stop it all   make down")
