"""Dynamic batching without a timer: the single-record requests of one pipeline that reach the service in the
same turn of the event loop are answered together, by one model call and one log commit.

A request alone goes to the model as soon as the loop has run the callbacks ready with it, so batching adds no
wait at low load; under load, the requests that arrived while the loop was busy with others are the batch.
(A timer, as Triton's and BentoML's batchers have, would add its wait to every request at one connection,
where this service's p50 is about a millisecond.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")
Result = TypeVar("Result")
# Answers the items of one key together: one result per item, in their order; an exception in the list fails
# only that item's caller, one raised fails them all.
BatchAnswer = Callable[[Key, list[Item]], Awaitable[list[Result | Exception]]]


class TurnBatcher(Generic[Key, Item, Result]):
    """Gathers the items submitted for a key during one turn of the event loop and answers them with one call
    of ``answer``; each caller gets the result of its own item."""

    def __init__(self, answer: BatchAnswer[Key, Item, Result], max_items: int) -> None:
        self._answer = answer
        self._max_items = max_items  # a batch this full starts at once, so one model call stays short
        self._pending: dict[Key, list[tuple[Item, asyncio.Future[Result]]]] = {}
        self._answering: set[asyncio.Task[None]] = set()  # referenced until done: the loop keeps only weak ones

    async def submit(self, key: Key, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Result] = loop.create_future()
        pending = self._pending.setdefault(key, [])
        if not pending:
            # Runs after the callbacks ready now: the requests read in this turn submit before it.
            loop.call_soon(self._start, key)
        pending.append((item, result))
        if len(pending) >= self._max_items:
            self._start(key)
        return await result

    def _start(self, key: Key) -> None:
        # A caller that stopped waiting (its client went away) is left out: its item is not answered, nor logged.
        # (The key may have no items: a full batch started before the turn ended.)
        gathered = [(item, result) for item, result in self._pending.pop(key, []) if not result.done()]
        if gathered:
            task = asyncio.ensure_future(self._settle(key, gathered))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _settle(self, key: Key, gathered: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            try:
                results = await self._answer(key, [item for item, _ in gathered])
            except Exception as err:  # a fault of ``answer`` itself: every caller gets it
                results = [err] * len(gathered)
            for (_, waiting), result in zip(gathered, results, strict=True):
                if waiting.done():  # its caller stopped waiting meanwhile
                    continue
                if isinstance(result, Exception):
                    waiting.set_exception(result)
                else:
                    waiting.set_result(result)
        finally:  # cancelled (the loop closing) or a wrong count of results: no caller waits forever
            for _, waiting in gathered:
                if not waiting.done():
                    waiting.cancel()
