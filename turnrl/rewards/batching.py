"""CallBatcher: merge concurrent calls of a model-based reward into one batched call.

The trainer scores the groups of a step concurrently, one reward call per
group (``score_groups``), and a model-based reward would run one forward pass
per group. :class:`CallBatcher` gathers the items of concurrent calls and runs
one ``fn(all_items)`` in a worker thread instead, the way the generation
engine merges ``generate`` requests (``turnrl.agents.engine``): there is no
background task; whichever caller finds the batcher idle lets the event loop
run until no new call arrives, runs everything queued, and wakes the others.
One batch runs at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio


@dataclass
class _Request:
    items: list[Any]
    results: list[Any] | None = None
    error: BaseException | None = None


class CallBatcher:
    """``await batcher(items)`` returns ``fn(items)``, computed with concurrent callers' items.

    Args:
        fn: A sync function from a list of items to one result per item, in
            order; it runs in a worker thread (a forward pass, typically).
        settle_rounds: Event-loop rounds without a new call before a batch is cut.

    Examples:
        >>> import anyio
        >>> batcher = CallBatcher(lambda xs: [x * x for x in xs])
        >>> anyio.run(batcher, [2, 3])
        [4, 9]
    """

    def __init__(self, fn: Callable[[list[Any]], list[Any]], *, settle_rounds: int = 3) -> None:
        self.fn = fn
        self.settle_rounds = settle_rounds
        self.calls = 0  # how many times fn ran (for tests and benchmarks)
        self._pending: list[_Request] = []
        self._busy = False
        self._done = anyio.Event()

    async def __call__(self, items: Sequence[Any]) -> list[Any]:
        """``fn(items)``; raises what ``fn`` raised for the batch."""
        request = _Request(list(items))
        self._pending.append(request)
        while request.results is None and request.error is None:
            if self._busy:
                await self._done.wait()
                continue
            self._busy = True
            try:
                await self._settle()
                batch, self._pending = self._pending, []
                await anyio.to_thread.run_sync(self._run, batch)
            finally:
                self._busy = False
                done, self._done = self._done, anyio.Event()
                done.set()
        if request.error is not None:
            raise request.error
        assert request.results is not None
        return request.results

    async def _settle(self) -> None:
        """Let concurrent callers queue their items (bounded, like the engine's)."""
        quiet, seen = 0, -1
        for _ in range(100 * self.settle_rounds):
            await anyio.lowlevel.checkpoint()
            quiet = quiet + 1 if len(self._pending) == seen else 0
            seen = len(self._pending)
            if quiet >= self.settle_rounds:
                return

    def _run(self, batch: list[_Request]) -> None:
        items = [item for request in batch for item in request.items]
        self.calls += 1
        try:
            results = list(self.fn(items))
            if len(results) != len(items):
                raise ValueError(
                    f"batched function returned {len(results)} results for {len(items)}"
                )
        except Exception as e:  # every waiter must hear about it
            for request in batch:
                request.error = e
            return
        start = 0
        for request in batch:
            request.results = results[start : start + len(request.items)]
            start += len(request.items)
