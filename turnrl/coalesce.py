"""Coalescer: merge concurrent requests into batches run in a worker thread.

Many episodes run concurrently on one event loop and each asks for one item at
a time (a turn, a reward). Run one by one, a model spends most of its time on
per-call overhead; batched, the same work costs little more than one call.

There is no background task. Whichever waiting caller finds the coalescer idle
becomes the dispatcher: it lets the event loop run until no new request
arrives (so callers that just got a result back can queue their next one),
cuts a batch, runs it in a worker thread, hands out the results and wakes
everyone. One batch runs at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Request(Generic[T, R]):
    item: T
    result: R | None = None
    error: BaseException | None = None
    done: bool = False


class Coalescer(Generic[T, R]):
    """``await coalescer(item)`` returns ``run([..., item, ...])``'s result for ``item``.

    Args:
        run: A sync function from a batch of items to one result per item, in
            order; it runs in a worker thread. What it raises, every caller of
            the batch raises.
        key: Only items with equal keys share a batch (default: all may).
        max_batch_size: Most items per batch (None: no limit); may be changed
            between batches.
        settle_rounds: Event-loop rounds without a new request before a batch
            is cut.

    Examples:
        >>> import anyio
        >>> squares = Coalescer(lambda xs: [x * x for x in xs])
        >>> anyio.run(squares, 3)
        9
    """

    def __init__(
        self,
        run: Callable[[list[T]], list[R]],
        *,
        key: Callable[[T], Hashable] | None = None,
        max_batch_size: int | None = None,
        settle_rounds: int = 3,
    ) -> None:
        self.run = run
        self.key = key
        self.max_batch_size = max_batch_size
        self.settle_rounds = settle_rounds
        self._pending: list[_Request[T, R]] = []
        self._busy = False
        self._wakeup = anyio.Event()

    async def __call__(self, item: T) -> R:
        """The result for ``item``, computed in a batch with concurrent callers' items."""
        request: _Request[T, R] = _Request(item)
        self._pending.append(request)
        while not request.done:
            if self._busy:
                await self._wakeup.wait()
                continue
            self._busy = True
            try:
                await self._settle()
                batch = self._take_batch()
                await anyio.to_thread.run_sync(self._run_batch, batch)
            finally:
                self._busy = False
                wakeup, self._wakeup = self._wakeup, anyio.Event()
                wakeup.set()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    async def _settle(self) -> None:
        """Let other callers queue their requests before a batch is cut (bounded)."""
        quiet, seen = 0, -1
        for _ in range(100 * self.settle_rounds):
            if self.max_batch_size is not None and len(self._pending) >= self.max_batch_size:
                return
            await anyio.lowlevel.checkpoint()
            quiet = quiet + 1 if len(self._pending) == seen else 0
            seen = len(self._pending)
            if quiet >= self.settle_rounds:
                return

    def _take_batch(self) -> list[_Request[T, R]]:
        batch = self._pending
        if self.key is not None:
            first = self.key(batch[0].item)
            batch = [r for r in batch if self.key(r.item) == first]
        batch = batch[: self.max_batch_size]
        taken = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        return batch

    def _run_batch(self, batch: list[_Request[T, R]]) -> None:
        try:
            results: Any = self.run([r.item for r in batch])
            if len(results) != len(batch):
                raise ValueError(
                    f"batched function returned {len(results)} results for {len(batch)}"
                )
        except BaseException as e:  # every waiter must hear about it
            for request in batch:
                request.error, request.done = e, True
            return
        for request, result in zip(batch, results, strict=True):
            request.result, request.done = result, True
