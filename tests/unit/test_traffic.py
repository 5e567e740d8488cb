"""A challenger proven on live traffic, in process with the model double (version v answers P(1) / v): in shadow
beside the champion, or answering a canary share with the champion in shadow; the caller sees only the answer
of the version that served it, and the log keeps both."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient
from flightplan.config import DeploymentSpec, PipelineConfig, load_pipeline
from flightplan.prediction_log import AnsweredRequest
from flightplan.serving import traffic
from flightplan.serving.app import COLUMNAR_ROWS, ServiceOptions, create_app
from flightplan.serving.inputs import request_fields
from flightplan.serving.metrics import ServiceMetrics
from flightplan.serving.models import BOOSTER_MIN_ROWS, ModelSource, ServedModel
from flightplan.serving.traffic import (
    ALIAS_HEADER,
    CALLER_KEY_HEADER,
    IDLE_SAMPLE_SECONDS,
    SHADOW_MAX_SLICE_ROWS,
    SHADOW_MIN_IDLE_SHARE,
    CpuCounters,
    CpuIdle,
    InFlight,
    Router,
    ShadowJob,
    ShadowRunner,
    cgroup_usage,
    machine_ticks,
)
from flightplan.settings import PACKAGE_PIPELINES_DIR, Settings, load_settings
from flightplan.slices import ShadowClock

from tests.support.model_double import DoubleRegistry, model_double
from tests.support.service import scoped_tokens
from tests.support.serving_clients import ADMIN_AUTH, AUTH, TOKEN
from tests.unit.test_service import full_record


def always_idle() -> float:
    """CPUs that are always idle, whatever the machine running the tests does meanwhile."""
    return 1.0


def serving(tmp_path: Path, **shares: float) -> tuple[Settings, PipelineConfig]:
    """A home whose flights pipeline shadows or canaries its challenger by ``shares``."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    pipeline = yaml.safe_load((PACKAGE_PIPELINES_DIR / "flights.yaml").read_text())
    pipeline.setdefault("deployment", {}).update(shares)
    (folder / "flights.yaml").write_text(yaml.safe_dump(pipeline))
    settings = load_settings({"FLIGHTPLAN_HOME": str(tmp_path / "home"), "FLIGHTPLAN_PIPELINES_DIR": str(folder)})
    return settings, load_pipeline("flights", folder)


def shadow_rows(settings: Settings) -> dict[str, tuple[str, float]]:
    """The log's answers given in shadow: version and probability by the served answer's id."""
    engine = sa.create_engine(settings.predictions_db_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("select id, model_version, probability from shadow_answers")).all()
    engine.dispose()
    return {row[0]: (row[1], row[2]) for row in rows}


def served(settings: Settings, registry: DoubleRegistry, sends: list[tuple[str, Any]]) -> tuple[list[Any], str]:
    """Each (route, body) sent by a client of its own, all at once; the answers' bodies, then the metrics. The
    service has stopped on return, so that its shadow answers are in the log."""
    app = create_app(settings, ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600), registry)

    async def clients() -> tuple[list[Any], str]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=AUTH) as client:
                answers = await asyncio.gather(*(client.post(f"/v1/flights/{r}", json=b) for r, b in sends))
                assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
                return [answer.json() for answer in answers], (await client.get("/metrics")).text

    return asyncio.run(clients())


def test_the_challenger_answers_every_request_in_shadow_and_only_the_champions_answer_is_sent(
    tmp_path: Path,
) -> None:
    settings, config = serving(tmp_path, shadow=1.0)
    registry = DoubleRegistry(challengers={"flights": "2"})
    record = full_record(config)
    singles = [("predict", record)] * 40
    batches = [("predict/batch", {"records": [record] * 3}), ("predict/batch", {"records": [record] * COLUMNAR_ROWS})]
    answers, metrics = served(settings, registry, [*singles, *batches])

    champion = answers[0]["probability"]  # the double's version 2 answers half of version 1's P(1)
    sent = [(a["id"], a["probability"]) for a in answers[:40]]
    sent += [(p["id"], p["probability"]) for a in answers[40:] for p in a["predictions"]]
    assert {a["model_version"] for a in answers} == {"1"} and all(p == pytest.approx(champion) for _, p in sent)
    assert len(sent) == 40 + 3 + COLUMNAR_ROWS
    # Every served answer has the challenger's beside it in the log, under the served answer's id.
    assert shadow_rows(settings) == {i: ("2", pytest.approx(champion / 2)) for i, _ in sent}
    assert f'flightplan_routed_rows_total{{alias="champion",pipeline="flights"}} {len(sent)}.0' in metrics


def test_a_canary_share_is_answered_by_the_challenger_with_the_champion_in_shadow(tmp_path: Path) -> None:
    settings, config = serving(tmp_path, canary=0.1)
    registry = DoubleRegistry(challengers={"flights": "2"})
    record = full_record(config)
    answers, _ = served(settings, registry, [("predict", record)] * 200)
    by_version = {v: [a for a in answers if a["model_version"] == v] for v in ("1", "2")}
    assert (len(by_version["1"]), len(by_version["2"])) == (180, 20)
    champion = by_version["1"][0]["probability"]
    assert {a["probability"] for a in by_version["1"]} == {champion}
    assert all(a["probability"] == pytest.approx(champion / 2) for a in by_version["2"])
    # Each canary answer has the champion's in shadow; the champion's own answers have none (no shadow share).
    assert shadow_rows(settings) == {a["id"]: ("1", pytest.approx(champion)) for a in by_version["2"]}


def test_a_caller_key_always_gets_the_same_version(tmp_path: Path) -> None:
    settings, config = serving(tmp_path, canary=0.3)
    registry = DoubleRegistry(challengers={"flights": "2"})
    options = ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600)
    with TestClient(create_app(settings, options, registry)) as api:
        assert api.get("/ready").json()["pipelines"]["flights"]["challenger"] == {
            "version": "2",
            "refused_version": None,
            "shadow": 0.0,
            "canary": 0.3,
        }
        versions: dict[str, set[str]] = {}
        for key in [f"user-{n}" for n in range(40)] * 3:
            answer = api.post("/v1/flights/predict", json=full_record(config), headers={**AUTH, CALLER_KEY_HEADER: key})
            versions.setdefault(key, set()).add(answer.json()["model_version"])
    assert all(len(found) == 1 for found in versions.values())
    assert {"1", "2"} == set().union(*versions.values())


def test_a_request_may_ask_for_an_alias_and_a_removed_challenger_stops_answering(tmp_path: Path) -> None:
    settings, config = serving(tmp_path, canary=1.0)
    registry = DoubleRegistry(challengers={"flights": "2"})
    options = ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600)
    record = full_record(config)

    def version(**headers: str) -> Any:
        answer = api.post("/v1/flights/predict/batch", json={"records": [record]}, headers={**AUTH, **headers})
        return answer.json()["model_version"] if answer.status_code == 200 else (answer.status_code, answer.text)

    with TestClient(create_app(settings, options, registry)) as api:
        assert version() == "2" and version(**{ALIAS_HEADER: "champion"}) == "1"
        assert version(**{ALIAS_HEADER: "challenger"}) == "2"
        status, text = version(**{ALIAS_HEADER: "previous"})
        assert status == 400 and f"header {ALIAS_HEADER}: 'previous' is not an alias" in text
        registry.challengers["flights"] = None
        reloads = api.post("/admin/reload", headers=ADMIN_AUTH).json()
        assert [(r["alias"], r["before"], r["serving"]) for r in reloads] == [
            ("champion", "1", "1"),
            ("challenger", "2", None),
        ]
        assert version() == "1" and api.get("/ready").json()["pipelines"]["flights"]["challenger"]["version"] is None
        status, text = version(**{ALIAS_HEADER: "challenger"})
        assert status == 409 and "no challenger loaded" in text
        metrics = api.get("/metrics").text
    assert 'flightplan_model_version{model="challenger"' not in metrics and 'model="champion"' in metrics
    # Only the first request was answered with the champion in shadow: the others asked for an alias.
    assert {row[0] for row in shadow_rows(settings).values()} == {"1"} and len(shadow_rows(settings)) == 1


def test_over_ten_thousand_requests_the_canary_share_is_kept_within_a_point(tmp_path: Path) -> None:
    _, config = serving(tmp_path)
    champion, challenger = model_double(config, "1"), model_double(config, "2")
    router = Router(DeploymentSpec(canary=0.07))
    keyless = [router.route(champion, challenger).canary for _ in range(10_000)]
    keyed = [router.route(champion, challenger, f"caller-{n}").canary for n in range(10_000)]
    assert sum(keyless) == 700 and abs(sum(keyed) / 10_000 - 0.07) <= 0.01
    assert not any(router.route(champion, model_double(config, "1")).shadow for _ in range(10))  # no challenger


class HeldLog:
    """A log that keeps what it is given in shadow, uncommitted."""

    def __init__(self) -> None:
        self.held: list[AnsweredRequest] = []

    def submit_shadow(self, answered: AnsweredRequest, budget_seconds: float) -> bool:
        self.held.append(answered)
        return True

    @property
    def shadow_rows_waiting(self) -> int:
        return sum(len(each.ids) for each in self.held)


def validated(config: PipelineConfig, record: dict[str, Any]) -> dict[str, Any]:
    """A record as the service holds it once validated: times and dates as Python values."""
    kinds = request_fields(config)
    parse = {"timestamp": datetime.fromisoformat, "date": date.fromisoformat}
    return {name: parse.get(kinds[name], lambda value: value)(value) for name, value in record.items()}


@dataclasses.dataclass(frozen=True)
class SlowChallenger:
    """The double's models, its challenger (version 2) taking half a second of CPU to answer, having said it
    began."""

    doubles: ModelSource
    began: threading.Event

    def version_of(self, alias: str) -> str | None:
        return self.doubles.version_of(alias)

    def load(self, version: str) -> ServedModel:
        double = self.doubles.load(version)

        def scores(matrix: Any) -> Any:
            self.began.set()
            started = time.thread_time()
            while time.thread_time() - started < 0.5:  # CPU the shadow takes while a request comes and goes
                pass
            return double.scores(matrix)

        return dataclasses.replace(double, scores=scores) if version == "2" else double


def test_each_request_counts_the_cpu_time_shadow_work_took_while_it_was_served(tmp_path: Path) -> None:
    """What the shadow budget caps, measured by the service: a request that comes while a slice is answered counts
    the CPU time the slice takes meanwhile (the most it could have taken from the request); one served while the
    shadow waited counts none, and a scrape of the metrics is not an API request."""
    settings, config = serving(tmp_path, shadow=1.0)
    registry, slice_began = DoubleRegistry(challengers={"flights": "2"}), threading.Event()

    def slow_challenger(config: PipelineConfig) -> SlowChallenger:
        return SlowChallenger(registry(config), slice_began)

    options = ServiceOptions(["flights"], scoped_tokens(TOKEN), poll_seconds=3600)
    with TestClient(create_app(settings, options, slow_challenger)) as api:
        assert api.post("/v1/flights/predict", json=full_record(config), headers=AUTH).status_code == 200
        assert slice_began.wait(30)
        started = time.perf_counter()
        assert api.post("/v1/flights/predict", json=full_record(config), headers=AUTH).status_code == 200
        took = time.perf_counter() - started
        api.get("/metrics")
        text = api.get("/metrics").text
    count = float(re.search(r"^flightplan_request_shadow_cpu_seconds_count (\S+)$", text, re.M)[1])  # type: ignore[index]
    total = float(re.search(r"^flightplan_request_shadow_cpu_seconds_sum (\S+)$", text, re.M)[1])  # type: ignore[index]
    assert count == 2
    assert 0 < total <= took  # the CPU the slice took during the second request, at most its whole time


def test_a_full_shadow_backlog_skips_requests_and_counts_them(tmp_path: Path) -> None:
    """Rows waiting to be committed count against the backlog as those waiting to be answered do."""
    _, config = serving(tmp_path)
    metrics, log, in_flight = ServiceMetrics(), HeldLog(), InFlight()
    record, challenger = validated(config, full_record(config)), model_double(config, "2")

    def job(*ids: str) -> ShadowJob:
        return ShadowJob("flights", challenger, list(ids), [record] * len(ids), budget_seconds=0.002)

    runner = ShadowRunner(log, metrics, in_flight, max_backlog_rows=3, cpu_idle=always_idle)
    with in_flight.serving():  # a request being served: the shadow waits, its backlog full
        runner.submit(job("a", "b", "c", "d"))  # more than the backlog takes
        runner.submit(job("e", "f"))
        runner.submit(job("x", "y"))  # with "e" and "f" waiting: over the backlog
    runner.close()  # "e" and "f" answered and held by the log
    runner = ShadowRunner(log, metrics, in_flight, max_backlog_rows=3, cpu_idle=always_idle)
    runner.submit(job("g", "h"))  # with the two held: over the backlog
    runner.submit(job("i"))
    runner.close()
    runner.submit(job("j"))  # the service is stopping
    assert [each.ids for each in log.held] == [["e"], ["f"], ["i"]]  # handed over by slice, the first one row
    assert {each.model_version for each in log.held} == {"2"}
    text = metrics.render().decode()
    assert re.search(r'flightplan_shadow_rows_total\{outcome="skipped",pipeline="flights"\} 9\.0', text), text
    assert re.search(r'flightplan_shadow_rows_total\{outcome="answered",pipeline="flights"\} 3\.0', text), text


def test_the_shadow_answers_only_while_no_request_is_served_in_slices_of_its_budget(tmp_path: Path) -> None:
    """A request arriving while the shadow answers waits for one slice at most: the first slice is one row, the
    next ones as many rows as the version answered in half the budget so far."""
    _, config = serving(tmp_path)
    clock = ShadowClock()
    log, in_flight, slices = HeldLog(), InFlight(clock), []

    def counted(version: str) -> ServedModel:
        double = model_double(config, version)

        def scores(matrix: Any) -> Any:
            slices.append(len(matrix))
            started, cpu = clock.now(), time.thread_time()
            while time.thread_time() - cpu < 0.001:  # a millisecond of CPU
                pass
            assert clock.now() - started >= 0.001  # a request arriving now sees the shadow's clock run
            return double.scores(matrix)

        return dataclasses.replace(double, scores=scores)

    record = validated(config, full_record(config))
    runner = ShadowRunner(log, ServiceMetrics(), in_flight, cpu_idle=always_idle)
    ids = [f"r{n}" for n in range(300)]
    with in_flight.serving():
        runner.submit(ShadowJob("flights", counted("2"), ids, [record] * 300, budget_seconds=1e-9))
        time.sleep(0.3)
        assert not slices and not log.held  # nothing answered while a request is served
    deadline = time.monotonic() + 10
    while len(log.held) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert slices == [1] * 300  # a budget no row fits: one row at a time
    slices.clear()
    runner.submit(ShadowJob("flights", counted("3"), ids, [record] * 300, budget_seconds=60.0))  # a new version
    runner.close()
    # The first row timed, then all that is left fits the budget, in slices the booster does not take.
    assert slices == [1, 99, 99, 99, 2] and SHADOW_MAX_SLICE_ROWS == BOOSTER_MIN_ROWS - 1 == 99
    assert [len(each.ids) for each in log.held] == [1] * 300 + [1, 99, 99, 99, 2]  # each handed over as answered


def test_requests_that_waited_for_quiet_are_answered_in_shadow_together_per_version(tmp_path: Path) -> None:
    """One-row requests queued while the service was busy cost the shadow one call per slice, not one per request:
    the jobs of a version are merged, the first row still timed alone."""
    _, config = serving(tmp_path)
    log, in_flight, calls = HeldLog(), InFlight(), []

    def counted(version: str) -> ServedModel:
        double = model_double(config, version)

        def scores(matrix: Any) -> Any:
            calls.append((version, len(matrix)))
            return double.scores(matrix)

        return dataclasses.replace(double, scores=scores)

    record, metrics = validated(config, full_record(config)), ServiceMetrics()
    runner = ShadowRunner(log, metrics, in_flight, cpu_idle=always_idle)
    second, third = counted("2"), counted("3")
    with in_flight.serving():
        for i, model in [("a", second), ("x", third), ("b", second), ("c", second), ("y", third), ("d", second)]:
            runner.submit(ShadowJob("flights", model, [i], [record], budget_seconds=60.0))
    runner.close()
    assert calls == [("2", 1), ("2", 3), ("3", 1), ("3", 1)]
    assert [each.ids for each in log.held] == [["a"], ["b", "c", "d"], ["x"], ["y"]]
    assert 'flightplan_shadow_slice_seconds_count{work="answer"} 4.0' in metrics.render().decode()


def test_the_shadow_waits_for_idle_cpus_as_it_waits_for_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quiet service on a saturated machine: the shadow waits for the CPUs to have idle time (a second at most;
    a minute here, so that only idle CPUs can end the wait), so that it does not take the CPU the served answers
    need."""
    monkeypatch.setattr(traffic, "SHADOW_LONGEST_WAIT_SECONDS", 60.0)
    _, config = serving(tmp_path)
    log, idle = HeldLog(), [0.0]
    record = validated(config, full_record(config))
    runner = ShadowRunner(log, ServiceMetrics(), InFlight(), cpu_idle=lambda: idle[0])
    runner.submit(ShadowJob("flights", model_double(config, "2"), ["a"], [record], budget_seconds=60.0))
    time.sleep(0.3)
    assert not log.held
    idle[0] = SHADOW_MIN_IDLE_SHARE
    deadline = time.monotonic() + 10
    while not log.held and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.close()
    assert [each.ids for each in log.held] == [["a"]]


def test_the_cpus_idle_share_is_the_machines_or_what_the_cgroups_quota_leaves(tmp_path: Path) -> None:
    stat, cgroup = tmp_path / "stat", tmp_path / "cgroup"
    cgroup.mkdir()

    def counters(idle: int, busy: int, used_usec: int, quota: str, moment: float = 1.0) -> CpuCounters:
        stat.write_text(f"cpu  {busy} 0 0 {idle - 10} 10 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
        (cgroup / "cpu.max").write_text(f"{quota} 100000\n")
        (cgroup / "cpu.stat").write_text(f"usage_usec {used_usec}\nuser_usec 1\n")
        return CpuCounters(moment, machine_ticks(stat), cgroup_usage(cgroup))

    first = counters(idle=1000, busy=1000, used_usec=1_000_000, quota="max")
    assert first.machine == (1000, 2000) and first.cgroup is None
    assert counters(idle=1300, busy=1100, used_usec=2_000_000, quota="max", moment=2.0).idle_since(first) == 0.75
    first = counters(idle=1000, busy=1000, used_usec=1_000_000, quota="50000")  # half a core
    # The machine 75% idle, the cgroup using 0.4 s of its half core over a second: 20% left.
    later = counters(idle=1300, busy=1100, used_usec=1_400_000, quota="50000", moment=2.0)
    assert later.idle_since(first) == pytest.approx(0.2)
    assert counters(idle=1300, busy=1100, used_usec=1_600_000, quota="50000", moment=2.0).idle_since(first) == 0.0
    assert machine_ticks(tmp_path / "none") is None and cgroup_usage(tmp_path) is None
    stat.write_text("cpu  1 2 3\n")  # not the eight counters: as unreadable, and the runner's thread lives on
    (cgroup / "cpu.stat").write_text("usage_usec\n")
    assert machine_ticks(stat) is None and cgroup_usage(cgroup) is None


def test_the_idle_share_is_measured_afresh_after_a_gap(tmp_path: Path) -> None:
    """The share is 0 (wait) until a measure has ended; a measure begun before the runner went without work for a
    while would count the idle gap, and is begun again instead."""
    stat, clock = tmp_path / "stat", [0.0]

    def share_at(moment: float, idle: int, busy: int) -> float:
        clock[0] = moment
        stat.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n")
        return cpu_idle.share()

    stat.write_text("cpu  1000 0 0 1000 0 0 0 0 0 0\n")
    cpu_idle = CpuIdle(stat, tmp_path / "no-cgroup", clock=lambda: clock[0])
    assert cpu_idle.share() == 0.0  # nothing measured yet
    assert share_at(IDLE_SAMPLE_SECONDS, idle=1300, busy=1100) == 0.75
    assert share_at(60.0, idle=9000, busy=1100) == 0.0  # a minute without work, the CPUs idle: not counted
    assert share_at(60.0 + IDLE_SAMPLE_SECONDS, idle=9000, busy=1200) == 0.0  # busy now
    assert share_at(60.0 + 2 * IDLE_SAMPLE_SECONDS, idle=9050, busy=1250) == 0.5
    unreadable = CpuIdle(tmp_path / "none", tmp_path, clock=lambda: clock[0])
    clock[0] += IDLE_SAMPLE_SECONDS
    assert unreadable.share() == 1.0  # nothing to read: only quiet is waited for


def test_a_shadow_never_given_quiet_waits_at_most_its_longest_wait() -> None:
    """So that a service that is never quiet still answers a slice now and then (the live gate gets its rows)."""
    in_flight, stop = InFlight(), threading.Event()
    with in_flight.serving():
        started = time.monotonic()
        in_flight.wait_until_quiet(stop, longest=0.2)
        assert 0.2 <= time.monotonic() - started < 5
        stop.set()
        started = time.monotonic()
        in_flight.wait_until_quiet(stop, longest=60)  # the service stopping: no wait
        assert time.monotonic() - started < 1


def test_a_request_in_flight_is_touched_once_shadow_work_has_run_since_it_came() -> None:
    """Shadow work taken during a request is what it may have cost it; the shadow waits for the requests that saw
    a slice to leave, not for those that came after it."""
    cpu = {threading.get_ident(): 0.0}
    clock = ShadowClock(cpu_seconds=lambda thread: cpu[thread])
    in_flight, stop, waited = InFlight(clock), threading.Event(), threading.Event()
    assert in_flight.untouched()  # quiet
    first = in_flight.serving()
    first_taken = first.__enter__()
    assert in_flight.untouched()
    with clock.working():
        cpu[threading.get_ident()] = 0.001
    assert not in_flight.untouched() and first_taken() == 0.001

    def wait() -> None:
        in_flight.wait_until_untouched(stop)
        waited.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    second = in_flight.serving()
    second_taken = second.__enter__()
    assert not waited.wait(0.3)  # the first request saw the slice
    first.__exit__(None, None, None)
    assert waited.wait(5)  # only the second is left, which has not
    assert in_flight.untouched() and second_taken() == 0.0 and not in_flight.quiet()
    second.__exit__(None, None, None)
    waiter.join()


def never_quiet_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[ServedModel, list[int], dict[str, Any], InFlight, ShadowRunner]:
    """A runner whose longest wait for quiet is 50 ms; version 2's double, which notes the rows of each call it
    scores; a record it takes; the requests in flight the runner waits for."""
    monkeypatch.setattr(traffic, "SHADOW_LONGEST_WAIT_SECONDS", 0.05)
    _, config = serving(tmp_path)
    in_flight, slices = InFlight(), []
    double = model_double(config, "2")

    def scores(matrix: Any) -> Any:
        slices.append(len(matrix))
        return double.scores(matrix)

    runner = ShadowRunner(HeldLog(), ServiceMetrics(), in_flight, cpu_idle=always_idle)
    record = validated(config, full_record(config))
    return dataclasses.replace(double, scores=scores), slices, record, in_flight, runner


def test_a_shadow_never_given_quiet_answers_one_slice_per_request_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests overlapping one another, so that the service is never quiet: after its longest wait the shadow
    answers a slice, then waits for the requests that saw it to leave, however long they last."""
    model, slices, record, in_flight, runner = never_quiet_runner(tmp_path, monkeypatch)
    first = in_flight.serving()
    first.__enter__()
    ids = [f"r{n}" for n in range(5)]
    runner.submit(ShadowJob("flights", model, ids, [record] * 5, 1e-9))
    time.sleep(0.5)
    assert slices == [1]  # one slice, after the longest wait; the first request saw it
    second = in_flight.serving()
    second.__enter__()
    first.__exit__(None, None, None)
    time.sleep(0.5)
    assert slices == [1, 1]  # the second request had seen none: one more, which it saw
    second.__exit__(None, None, None)  # quiet
    runner.close()
    assert slices == [1] * 5


def test_a_slice_given_while_requests_are_served_is_sized_by_such_slices_not_by_quiet_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After slices of a quiet service have timed the version, the first slice given to a service never quiet is
    one row again, to time what a slice takes on its busy CPUs; the next is sized by that."""
    model, slices, record, in_flight, runner = never_quiet_runner(tmp_path, monkeypatch)
    runner.submit(ShadowJob("flights", model, [f"q{n}" for n in range(100)], [record] * 100, 60.0))
    deadline = time.monotonic() + 10
    while len(slices) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert slices == [1, 99]  # quiet: the first row timed, then the rest at once
    first = in_flight.serving()
    first.__enter__()
    runner.submit(ShadowJob("flights", model, [f"b{n}" for n in range(5)], [record] * 5, 60.0))
    time.sleep(0.5)
    assert slices == [1, 99, 1]  # after the longest wait, with a request in flight: one row, to time it
    second = in_flight.serving()
    second.__enter__()
    first.__exit__(None, None, None)
    time.sleep(0.5)
    assert slices == [1, 99, 1, 4]  # the second request had seen none: the rest, sized by the busy slice
    second.__exit__(None, None, None)
    runner.close()
