"""Slices sized to a share of a time budget from the time per row measured so far."""

from __future__ import annotations

import threading
import time

import pytest
from flightplan.slices import ShadowClock, SliceSizer, thread_cpu_seconds


def test_a_slice_takes_half_the_budget_at_the_time_per_row_measured() -> None:
    sizer = SliceSizer()
    assert sizer.rows("v1", budget_seconds=0.010) == 1  # nothing measured: one row, to time it
    sizer.measured("v1", rows=10, seconds=0.010)  # 1 ms a row
    assert sizer.rows("v1", budget_seconds=0.010) == 5  # half of 10 ms, not the whole (10 rows)
    assert sizer.rows("v1", budget_seconds=0.0001) == 1  # a budget no row fits: still one row at a time
    assert sizer.rows("v2", budget_seconds=0.010) == 1  # each kind of work is measured on its own


def test_one_slow_slice_halves_the_next_only() -> None:
    sizer = SliceSizer()
    sizer.measured("v1", rows=10, seconds=0.010)  # 1 ms a row
    sizer.measured("v1", rows=10, seconds=0.030)  # 3 ms a row (a collection): averaged to 2 ms
    assert sizer.rows("v1", budget_seconds=0.020) == 5
    sizer.measured("v1", rows=10, seconds=0.010)  # back to 1 ms: averaged to 1.5 ms
    assert sizer.rows("v1", budget_seconds=0.030) == 10


def test_the_shadow_clock_counts_the_cpu_time_of_shadow_work_as_it_goes() -> None:
    """Each slice counts its thread's CPU time while it runs; between slices nothing counts. Slices run one at a
    time: another thread's waits for the first to end, then asks again whether there is room for it."""
    cpu: dict[int, float] = {}
    clock = ShadowClock(cpu_seconds=lambda thread: cpu[thread])
    me = threading.get_ident()
    cpu[me] = 10.0
    asked, began = threading.Event(), threading.Event()

    def room() -> bool:
        asked.set()
        return True

    def other_slice() -> None:
        cpu[threading.get_ident()] = 4.0
        with clock.working(room) as working:
            assert working
            cpu[threading.get_ident()] = 4.5
            began.set()

    with clock.working() as working:
        assert working
        cpu[me] = 11.0
        assert clock.now() == 1.0  # read by a request while the slice runs
        worker = threading.Thread(target=other_slice)
        worker.start()
        assert not asked.wait(0.2)  # waits for this slice to end before asking
    assert began.wait(10)
    worker.join()
    assert clock.now() == 1.5
    cpu[me] = 20.0  # CPU spent outside any slice
    assert clock.now() == 1.5
    with pytest.raises(RuntimeError), clock.working():
        cpu[me] = 21.0
        raise RuntimeError("a failed slice")
    assert clock.now() == 2.5  # counted too
    with clock.working(lambda: False) as working:
        assert not working  # no room: the caller skips its work, and nothing counts
        cpu[me] = 30.0
    assert clock.now() == 2.5


def test_a_threads_cpu_time_is_read_from_another_thread() -> None:
    burnt, stop = threading.Event(), threading.Event()

    def burn() -> None:
        started = time.thread_time()
        while time.thread_time() - started < 0.05:
            pass
        burnt.set()
        stop.wait(10)

    worker = threading.Thread(target=burn)
    worker.start()
    assert burnt.wait(10) and worker.ident is not None
    assert thread_cpu_seconds(worker.ident) >= 0.05
    stop.set()
    worker.join()
