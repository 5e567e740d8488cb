"""Work cut into slices that fit a time budget, sized from the time per row measured so far.

The shadow answers and commits its rows in such slices, so that a served request arriving meanwhile waits for
one slice at most: the runner per model version, the prediction log for its commits."""

from __future__ import annotations

from collections.abc import Hashable

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
