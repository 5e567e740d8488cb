"""Which version answers a request, and which answers it unseen (in shadow).

A pipeline with a `challenger` to prove (``deployment.canary`` or ``deployment.shadow`` above zero) routes each
request: the canary share is answered by the challenger, with the champion in shadow, so that every canary
answer has the champion's beside it; of the others, the shadow share gets the challenger in shadow. The caller
only ever sees the answer of the version that served it, and the log keeps both, each with its version.

Shares are kept exactly rather than drawn at random: of the first n requests, the share of n (rounded down)
takes the route (10% canary: every tenth request, whatever the traffic). A request with a caller key goes by
its key instead: the key's hash falls below the share or not, so a caller keeps the version it got for as long
as the share stays the same."""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from flightplan.config import DeploymentSpec, PipelineConfig
from flightplan.model.registry import CHALLENGER, CHAMPION
from flightplan.prediction_log import AnsweredRequest
from flightplan.serving.metrics import ServiceMetrics
from flightplan.serving.models import (
    BOOSTER_MIN_ROWS,
    Answer,
    ModelSlot,
    ModelSources,
    ServedModel,
    answer_texts,
    answers_each,
)
from flightplan.slices import SHADOW_LONGEST_WAIT_SECONDS, ShadowClock, SliceSizer

log = logging.getLogger(__name__)

# The request header naming its caller (a user, a session, a device): the same key always gets the same version.
CALLER_KEY_HEADER = "X-Caller-Key"
# The request header that asks for one alias, with nothing in shadow (the deployment's smoke test asks for the
# champion, which a canary share could otherwise answer).
ALIAS_HEADER = "X-Model-Alias"
HASH_PLACES = 2**64
# Rows waiting for their shadow answers at most: beyond, a request is not shadowed (the shadow falls behind only
# when the service is saturated, and then it must not take memory or CPU from the served answers).
SHADOW_BACKLOG_ROWS = 20_000
# The most rows of one slice: fewer than the booster takes, so that the shadow answers on one thread, in
# onnxruntime (one intra-op thread, the calling one). The booster would answer on every core: CPU the served
# answers need, and which the slice's clock (its thread's CPU time) would not count.
SHADOW_MAX_SLICE_ROWS = BOOSTER_MIN_ROWS - 1
# How often a shadow waiting for quiet looks whether the service is stopping.
QUIET_POLL_SECONDS = 0.1
# The share of the CPUs that must have gone unused lately for the shadow to answer. On a saturated machine the
# shadow's CPU work delays the served answers however small its slices: with 1-row requests at 32 connections,
# shadowing every row in quiet moments added 14-26 ms to the served p99 (docs/performance.md).
# The shadow's own CPU counts as used: it then leaves the machine that idle share rather than filling it.
SHADOW_MIN_IDLE_SHARE = 0.15
# How long the CPUs' idle share is measured over (reading the counters costs some 20 µs).
IDLE_SAMPLE_SECONDS = 0.1
# A measure begun longer ago than this (the runner had no work meanwhile) would say how idle the CPUs were then.
IDLE_SAMPLE_STALE_SECONDS = 1.0


class Share:
    """Takes ``share`` of the requests it is asked about, spread evenly."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._asked = 0
        self._taken = 0
        self._lock = threading.Lock()  # the routes ask from the event loop; a test may ask from threads

    def take(self, caller_key: str | None = None) -> bool:
        if self.share <= 0:
            return False
        if caller_key is not None:
            digest = hashlib.blake2b(caller_key.encode(), digest_size=8).digest()
            return int.from_bytes(digest, "big") < self.share * HASH_PLACES
        with self._lock:
            self._asked += 1
            # Counted rather than added up: a sum of shares drifts by its rounding (ten times 0.1 is below 1).
            if self._taken < math.floor(self._asked * self.share + 1e-9):
                self._taken += 1
                return True
        return False


@dataclass(frozen=True)
class Routing:
    """What a request asks of the routing: its caller key, or an alias to be answered by."""

    caller_key: str | None = None
    alias: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Routing:
        alias = headers.get(ALIAS_HEADER)
        if alias not in (None, CHAMPION, CHALLENGER):
            expected = f"expected {CHAMPION} or {CHALLENGER}"
            raise ValueError(f"header {ALIAS_HEADER}: {alias!r:.40} is not an alias: {expected}")
        return cls(headers.get(CALLER_KEY_HEADER), alias)


@dataclass(frozen=True)
class Route:
    serving: ServedModel
    shadow: ServedModel | None = None
    canary: bool = False  # served by the challenger

    @property
    def alias(self) -> str:
        return CHALLENGER if self.canary else CHAMPION

    @property
    def key(self) -> tuple[str, str | None]:
        """The versions of the route: requests of one route can be answered by the same model calls."""
        return self.serving.version, self.shadow.version if self.shadow else None


class Router:
    """The routes of one pipeline's requests, by its deployment spec."""

    def __init__(self, spec: DeploymentSpec) -> None:
        self.canary = Share(spec.canary)
        self.shadow = Share(spec.shadow)

    @property
    def wants_challenger(self) -> bool:
        return self.canary.share > 0 or self.shadow.share > 0

    def route(self, champion: ServedModel, challenger: ServedModel | None, caller_key: str | None = None) -> Route:
        if challenger is None or challenger.version == champion.version:
            return Route(champion)
        if self.canary.take(caller_key):
            return Route(challenger, champion, canary=True)
        return Route(champion, challenger if self.shadow.take() else None)


class RouteKey(NamedTuple):
    """The single-record requests of one key are answered together: one pipeline, the same versions."""

    pipeline: str
    serving: str
    shadow: str | None


@dataclass(frozen=True)
class Challenger:
    router: Router
    slot: ModelSlot  # the `challenger` alias's version, loaded


def challenger_of(config: PipelineConfig, models: ModelSources) -> Challenger | None:
    """What a pipeline that shadows or canaries its challenger needs; None for the others."""
    router = Router(config.deployment)
    return Challenger(router, ModelSlot(config, models(config), CHALLENGER)) if router.wants_challenger else None


class ShadowLog(Protocol):
    """Where answers given in shadow go: the prediction log (``PredictionLog.submit_shadow``)."""

    def submit_shadow(self, answered: AnsweredRequest, budget_seconds: float) -> bool: ...

    @property
    def shadow_rows_waiting(self) -> int: ...


class InFlight:
    """The served requests being answered, and the shadow's CPU time (``clock``) when each came: the shadow waits
    until there are none, or at least none that has shared its time with shadow work yet."""

    def __init__(self, clock: ShadowClock | None = None) -> None:
        self.clock = clock or ShadowClock()
        self._came: dict[object, float] = {}  # by request: the clock when it came
        self._changed = threading.Condition()  # notified as each request leaves
        self.on_quiet: Callable[[], None] = lambda: None  # called as the last request in flight leaves

    @contextmanager
    def serving(self) -> Iterator[Callable[[], float]]:
        """A request in flight; yields what gives the CPU time shadow work has taken since it came."""
        request, came = object(), self.clock.now()
        with self._changed:
            self._came[request] = came
        try:
            yield lambda: self.clock.now() - came
        finally:
            with self._changed:
                del self._came[request]
                quiet = not self._came
                self._changed.notify_all()
            if quiet:
                self.on_quiet()

    def quiet(self) -> bool:
        return not self._came

    def untouched(self) -> bool:
        """Whether no request in flight has shared its time with shadow work yet (true when quiet): one more slice
        then overlaps each of them once at most, however long they last."""
        with self._changed:
            earliest = min(self._came.values(), default=None)
        return earliest is None or self.clock.now() == earliest

    def wait_until_quiet(self, stop: threading.Event, longest: float = SHADOW_LONGEST_WAIT_SECONDS) -> None:
        """Returns once no request is in flight, when ``stop`` is set, or after ``longest`` seconds anyway."""
        self._wait_for(self.quiet, stop, longest)

    def wait_until_untouched(self, stop: threading.Event) -> None:
        """Returns once no request in flight has shared its time with shadow work (``untouched``), or when ``stop``
        is set: after the requests that saw the last slice have left."""
        self._wait_for(self.untouched, stop, math.inf)

    def _wait_for(self, condition: Callable[[], bool], stop: threading.Event, longest: float) -> None:
        deadline = time.monotonic() + longest
        with self._changed:
            while not condition() and not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                # Woken as a request leaves; the timeout looks at ``stop``.
                self._changed.wait(min(left, QUIET_POLL_SECONDS))


class CpuIdle:
    """The share of the CPUs the service may use that went unused over the last ``IDLE_SAMPLE_SECONDS`` or so: the
    machine's (``/proc/stat``), or what is left of its cgroup's quota (cgroup v2 ``cpu.max`` and ``cpu.stat``)
    when a quota is set and leaves less. 1 where neither can be read: the shadow then waits for quiet only. 0 until
    a first measure has ended, and again after a measure grew stale: the shadow then waits for one. Not
    thread-safe: the shadow runner asks it from its one thread."""

    def __init__(
        self,
        proc_stat: Path = Path("/proc/stat"),
        cgroup: Path = Path("/sys/fs/cgroup"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._proc_stat, self._cgroup, self._clock = proc_stat, cgroup, clock
        self._sample = self._counters()
        self._idle = 0.0

    def share(self) -> float:
        age = self._clock() - self._sample.moment
        if age >= IDLE_SAMPLE_SECONDS:  # the counters are read only when due
            sample = self._counters()
            self._idle = sample.idle_since(self._sample) if age < IDLE_SAMPLE_STALE_SECONDS else 0.0
            self._sample = sample
        return self._idle

    def _counters(self) -> CpuCounters:
        return CpuCounters(self._clock(), machine_ticks(self._proc_stat), cgroup_usage(self._cgroup))


class CpuCounters(NamedTuple):
    moment: float  # time.monotonic()
    machine: tuple[int, int] | None  # idle and total ticks of the machine's CPUs
    cgroup: tuple[float, float] | None  # CPU seconds the cgroup used, and the cores its quota allows

    def idle_since(self, earlier: CpuCounters) -> float:
        shares = [1.0]
        if self.machine and earlier.machine and self.machine[1] > earlier.machine[1]:
            shares.append((self.machine[0] - earlier.machine[0]) / (self.machine[1] - earlier.machine[1]))
        if self.cgroup and earlier.cgroup:
            allowed = self.cgroup[1] * (self.moment - earlier.moment)
            shares.append(max(0.0, 1 - (self.cgroup[0] - earlier.cgroup[0]) / allowed))
        return min(shares)


def machine_ticks(proc_stat: Path) -> tuple[int, int] | None:
    """Idle (with I/O wait) and total ticks of all CPUs since boot; None where there is no ``/proc/stat`` or its
    first line is not the CPUs' eight counters."""
    try:
        ticks = [int(field) for field in proc_stat.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (ticks[3] + ticks[4], sum(ticks)) if len(ticks) == 8 else None


def cgroup_usage(folder: Path) -> tuple[float, float] | None:
    """CPU seconds the cgroup has used, and the cores its quota allows; None without a quota, or where the files
    are not as cgroup v2 writes them."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        usage = next(line for line in (folder / "cpu.stat").read_text().splitlines() if line.startswith("usage_usec "))
        return (int(usage.split()[1]) / 1e6, int(quota) / int(period)) if quota != "max" else None
    except (OSError, ValueError, StopIteration, IndexError, ZeroDivisionError):
        return None


@dataclass(frozen=True)
class ShadowJob:
    pipeline: str
    model: ServedModel
    ids: list[str]
    records: list[dict[str, Any]]
    budget_seconds: float  # the longest a served request may wait for the job (``deployment.shadow_budget_ms``)


class ShadowRunner:
    """Answers requests in shadow on a thread of its own, once their callers have their answers, and hands the
    answers to the log, which commits them when no served request waits.

    A served request must not wait for the shadow longer than its pipeline's budget: the runner answers only
    while no served request is in flight and the CPUs have idle time (``cpu_idle``, by default ``CpuIdle``), or
    after waiting a second for both, once no request in flight has seen shadow work; in slices sized to take half
    the budget of its thread's CPU time (``flightplan.slices``), each handed to the log as it is answered, which
    commits them in slices of half the budget too. Slices run one at a time: a request shares its time with one
    of them at most. A busy service thus shadows fewer
    requests: one whose rows would put more than ``max_backlog_rows`` in waiting (to be answered, or committed)
    is not shadowed (``flightplan_shadow_rows_total{outcome="skipped"}``)."""

    def __init__(
        self,
        log: ShadowLog,
        metrics: ServiceMetrics,
        in_flight: InFlight,
        max_backlog_rows: int = SHADOW_BACKLOG_ROWS,
        cpu_idle: Callable[[], float] | None = None,
    ) -> None:
        self._log, self._metrics, self._in_flight = log, metrics, in_flight
        self._clock = in_flight.clock  # runs while a slice is answered
        self._cpu_idle = cpu_idle or CpuIdle().share
        self._max_backlog_rows = max_backlog_rows
        self._backlog = 0  # rows waiting to be answered
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[ShadowJob | None] = queue.SimpleQueue()
        self._sizer = SliceSizer()  # by pipeline, version, and whether the service was quiet
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def submit(self, job: ShadowJob) -> None:
        with self._lock:
            taken = not self._closing.is_set() and (
                self._backlog + self._log.shadow_rows_waiting + len(job.ids) <= self._max_backlog_rows
            )
            if taken:
                self._backlog += len(job.ids)
                self._jobs.put(job)
        if not taken:
            self._metrics.shadow_rows.labels(job.pipeline, "skipped").inc(len(job.ids))

    def close(self) -> None:
        """Answers what is waiting, without waiting for quiet (the log, closed after, commits it); what comes
        later is skipped."""
        with self._lock:
            self._closing.set()
            self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopped = False
        while not stopped:
            jobs, stopped = self._waiting_jobs()
            for job in merged(jobs):
                self._answer(job)

    def _waiting_jobs(self) -> tuple[list[ShadowJob], bool]:
        """The jobs that came while the runner waited for its first one and then for quiet (none at the stop);
        whether the stop came after them."""
        first = self._jobs.get()
        if first is None:
            return [], True
        self._wait_for_room()
        jobs = [first]
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return jobs, False
            if job is None:
                return jobs, True
            jobs.append(job)

    def _answer(self, job: ShadowJob) -> None:
        done = 0  # rows answered and handed over: the log counts them as waiting from then on
        try:
            while done < len(job.ids):
                # A slice given while requests are served runs on busy CPUs, whose caches they filled: sized by
                # what such slices took, not by those of a quiet service.
                kind = (job.pipeline, job.model.version, self._wait_for_room())
                rows = min(self._sizer.rows(kind, job.budget_seconds), len(job.ids) - done, SHADOW_MAX_SLICE_ROWS)
                with self._clock.working(self._has_room) as working:
                    if not working:
                        continue
                    self._answer_slice(job, done, rows, kind)
                done += rows
                with self._lock:
                    self._backlog -= rows
        except Exception:  # the served answers stand; the shadow's are missing from the comparison
            left = len(job.ids) - done
            log.exception("%s: version %s could not answer %d rows in shadow", job.pipeline, job.model.version, left)
            self._metrics.shadow_rows.labels(job.pipeline, "failed").inc(left)
            with self._lock:
                self._backlog -= left

    def _wait_for_room(self) -> bool:
        """Returns once no request is in flight and the CPUs have idle time, when the service stops, or after
        ``SHADOW_LONGEST_WAIT_SECONDS`` once no request in flight has seen shadow work: a service never quiet then
        gets a slice as the requests that saw the last one have left, each request sharing its time with one slice
        at most, however long it lasts. Whether it found the service quiet (or stopping)."""
        deadline = time.monotonic() + SHADOW_LONGEST_WAIT_SECONDS
        while (left := deadline - time.monotonic()) > 0 and not self._closing.is_set():
            self._in_flight.wait_until_quiet(self._closing, longest=left)
            if self._in_flight.quiet() and self._cpu_idle() >= SHADOW_MIN_IDLE_SHARE:
                return True
            self._closing.wait(min(left, IDLE_SAMPLE_SECONDS))
        self._in_flight.wait_until_untouched(self._closing)
        return self._closing.is_set()

    def _has_room(self) -> bool:
        """Whether a slice may begin now that no other runs: at the stop, or while no request in flight has seen
        shadow work."""
        return self._closing.is_set() or self._in_flight.untouched()

    def _answer_slice(self, job: ShadowJob, start: int, rows: int, kind: Hashable) -> None:
        """Answers ``rows`` of the job's records from ``start`` and hands them to the log; a record the shadow's
        version cannot take is left out. The slice's time sizes the next of its ``kind``."""
        ids, records = job.ids[start : start + rows], job.records[start : start + rows]
        # The thread's CPU time: a served request waits for what the slice holds the CPU and the interpreter's lock
        # for, not for the time the slice itself waited for them while served requests ran.
        started = time.thread_time()
        answered = answers_each(job.model, records)
        kept = [(i, answer) for i, answer in zip(ids, answered, strict=True) if isinstance(answer, Answer)]
        if kept and not self._log.submit_shadow(
            shadow_request(job.pipeline, job.model.version, kept), job.budget_seconds
        ):
            raise RuntimeError("the prediction log is closed")
        self._metrics.shadow_rows.labels(job.pipeline, "answered").inc(len(kept))
        self._metrics.shadow_rows.labels(job.pipeline, "refused").inc(rows - len(kept))
        took = time.thread_time() - started
        self._sizer.measured(kind, rows, took)
        self._metrics.shadow_slice_seconds.labels("answer").observe(took)


def merged(jobs: list[ShadowJob]) -> list[ShadowJob]:
    """The jobs of each loaded version as one, in the order of their first: a slice then answers several requests'
    rows in one call, as the served answers are batched (one-row requests at 32 connections cost the shadow a call
    each otherwise)."""
    by_model: dict[tuple[str, int], list[ShadowJob]] = {}
    for job in jobs:
        by_model.setdefault((job.pipeline, id(job.model)), []).append(job)
    return [
        ShadowJob(
            same[0].pipeline,
            same[0].model,
            [i for job in same for i in job.ids],
            [record for job in same for record in job.records],
            min(job.budget_seconds for job in same),
        )
        for same in by_model.values()
    ]


def shadow_request(pipeline: str, version: str, answered: list[tuple[str, Answer]]) -> AnsweredRequest:
    """The log's rows of answers given in shadow, each under the id of the answer that was served."""
    answers = [answer for _, answer in answered]
    probabilities = [answer.probability for answer in answers]
    ids = [i for i, _ in answered]
    return AnsweredRequest("", pipeline, version, ids, [], answer_texts(answers), probabilities)
