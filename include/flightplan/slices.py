"""Work cut into slices that fit a time budget, sized from the time per row measured so far.

The shadow answers and commits its rows in such slices, so that a served request arriving meanwhile waits for
one slice at most: the runner per model version, the prediction log for its commits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Protocol

# The share of its budget a slice is sized to take: a served request that arrives during a slice also waits for
# the interpreter's lock to pass back and for the slice's result to be handed on, and at 8 connections slices of
# the whole budget added more than the budget to the served p99 (docs/performance.md).
SLICE_SHARE_OF_BUDGET = 0.5
# The longest a slice of shadow work waits for a moment with no served request before it is done anyway: a service
# never free still has its challenger answer, and its answers committed, a slice a second (a sliver of its time),
# so that a live gate gets its rows, slowly.
SHADOW_LONGEST_WAIT_SECONDS = 1.0


class SliceSizer:
    """The rows a slice of work may hold to take ``SLICE_SHARE_OF_BUDGET`` of a budget, per kind of work (a key):
    one row while nothing is measured, then as many as the time per row measured so far allows (at least one).
    Each measure is averaged with the last estimate, so that one slow slice (a collection, a page fault) weighs
    half in the next size and a quarter in the one after. Not thread-safe: each user sizes its slices on one
    thread."""

    def __init__(self) -> None:
        self._seconds_per_row: dict[Hashable, float] = {}

    def rows(self, key: Hashable, budget_seconds: float) -> int:
        per_row = self._seconds_per_row.get(key)
        return 1 if per_row is None else max(1, int(budget_seconds * SLICE_SHARE_OF_BUDGET / per_row))

    def measured(self, key: Hashable, rows: int, seconds: float) -> None:
        took = max(seconds, 1e-9) / max(rows, 1)  # a clock too coarse to see the slice must not size the next
        last = self._seconds_per_row.get(key)
        self._seconds_per_row[key] = took if last is None else (last + took) / 2


class ServedRequests(Protocol):
    """The requests a service is answering, as shadow work asks about them (``serving.traffic.InFlight``), and the
    clock of the shadow work they share their time with."""

    @property
    def clock(self) -> ShadowClock: ...

    def quiet(self) -> bool:
        """Whether none is in flight."""
        ...

    def untouched(self) -> bool:
        """Whether none in flight has shared its time with shadow work yet."""
        ...


class NoServedRequests:
    """A log with no service in front: it is always quiet, and its shadow work has a clock of its own."""

    def __init__(self) -> None:
        self.clock = ShadowClock()

    def quiet(self) -> bool:
        return True

    def untouched(self) -> bool:
        return True


class ShadowClock:
    """The CPU time shadow work has taken (slices answered, slices committed, each on its thread), counted as it
    goes: what it advanced by over a served request's lifetime is the most the shadow could have taken from that
    request, which ``deployment.shadow_budget_ms`` caps. Slices run one at a time, so that a request arriving
    meanwhile shares its time with one of them at most. Thread-safe: the shadow's runner and the log's writer
    work, and the served requests read, on threads of their own."""

    def __init__(self, cpu_seconds: Callable[[int], float] | None = None) -> None:
        self._cpu_seconds = cpu_seconds or thread_cpu_seconds
        self._lock = threading.Lock()
        self._one_slice = threading.Lock()
        self._spent = 0.0  # by the slices that have ended
        self._running: tuple[int, float] | None = None  # the slice's thread, and its CPU time when the slice began

    def now(self) -> float:
        with self._lock:
            return self._spent_so_far()

    def _spent_so_far(self) -> float:
        """By the slices that have ended and the one running; the caller holds the lock."""
        if self._running is None:
            return self._spent
        thread, began = self._running
        return self._spent + self._cpu_seconds(thread) - began

    @contextmanager
    def working(self, room: Callable[[], bool] = lambda: True) -> Iterator[bool]:
        """A slice of shadow work on this thread, once no other slice runs, if ``room()`` holds then (asked after
        the wait, which another slice may have filled): yields whether it does, the caller skipping the work when
        it does not."""
        with self._one_slice:
            if not room():
                yield False
                return
            thread = threading.get_ident()
            with self._lock:
                self._running = (thread, self._cpu_seconds(thread))
            try:
                yield True
            finally:
                with self._lock:
                    self._spent, self._running = self._spent_so_far(), None


def thread_cpu_seconds(thread: int) -> float:
    """The CPU time of a thread of this process, given its ``threading.get_ident()``: ``time.thread_time`` of
    another thread."""
    return time.clock_gettime(time.pthread_getcpuclockid(thread))
