"""The turn batcher alone: what one turn of the event loop gathers, the cap on a batch, and whose item fails."""

from __future__ import annotations

import asyncio

import pytest
from flightplan.serving.batching import TurnBatcher


class Doubler:
    """Answers each item with its double; an item named in ``refused`` gets an exception of its own."""

    def __init__(self, refused: frozenset[int] = frozenset()) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.refused = refused

    async def __call__(self, key: str, items: list[int]) -> list[int | Exception]:
        self.batches.append((key, items))
        return [ValueError(f"item {item}") if item in self.refused else 2 * item for item in items]


def test_items_submitted_in_one_turn_are_answered_by_one_call_per_key() -> None:
    answer = Doubler()
    batcher: TurnBatcher[str, int, int] = TurnBatcher(answer, max_items=100)

    async def clients() -> list[int]:
        return await asyncio.gather(*(batcher.submit("odd" if n % 2 else "even", n) for n in range(6)))

    assert asyncio.run(clients()) == [0, 2, 4, 6, 8, 10]
    assert sorted(answer.batches) == [("even", [0, 2, 4]), ("odd", [1, 3, 5])]


def test_a_full_batch_starts_at_once_and_the_rest_form_the_next() -> None:
    answer = Doubler()
    batcher: TurnBatcher[str, int, int] = TurnBatcher(answer, max_items=2)

    async def clients() -> list[int]:
        return await asyncio.gather(*(batcher.submit("key", n) for n in range(5)))

    assert asyncio.run(clients()) == [0, 2, 4, 6, 8]
    assert [items for _, items in answer.batches] == [[0, 1], [2, 3], [4]]


def test_an_item_answered_with_an_exception_fails_only_its_caller() -> None:
    batcher: TurnBatcher[str, int, int] = TurnBatcher(Doubler(refused=frozenset({1})), max_items=10)

    async def clients() -> list[int | BaseException]:
        return await asyncio.gather(*(batcher.submit("key", n) for n in range(3)), return_exceptions=True)

    first, refused, last = asyncio.run(clients())
    assert (first, last) == (0, 4)
    assert isinstance(refused, ValueError) and str(refused) == "item 1"


def test_a_caller_that_stopped_waiting_before_its_batch_started_is_left_out() -> None:
    answer = Doubler()
    batcher: TurnBatcher[str, int, int] = TurnBatcher(answer, max_items=10)

    async def clients() -> int:
        gone = asyncio.ensure_future(batcher.submit("key", 7))
        staying = asyncio.ensure_future(batcher.submit("key", 8))
        await asyncio.sleep(0)  # both submitted: the batch starts on the next turn
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await staying

    assert asyncio.run(clients()) == 16
    assert answer.batches == [("key", [8])]
