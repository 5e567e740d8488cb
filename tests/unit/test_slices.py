"""Slices sized to a share of a time budget from the time per row measured so far."""

from __future__ import annotations

from flightplan.slices import SliceSizer


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
