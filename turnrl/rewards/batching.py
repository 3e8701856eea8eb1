"""CallBatcher: merge concurrent calls of a model-based reward into one batched call.

The trainer scores the groups of a step concurrently, one reward call per
group (``score_groups``), and a model-based reward would run one forward pass
per group. :class:`CallBatcher` gathers the items of concurrent calls and runs
one ``fn(all_items)`` in a worker thread instead, through the same
:class:`~turnrl.coalesce.Coalescer` that merges the generation engine's
requests: each call is one request, and a batch of calls is one ``fn`` call
over their items, split back per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from turnrl.coalesce import Coalescer


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
        self.calls = 0  # how many times fn ran (for tests and benchmarks)
        self._coalescer: Coalescer[list[Any], list[Any]] = Coalescer(
            self._run, settle_rounds=settle_rounds
        )

    async def __call__(self, items: Sequence[Any]) -> list[Any]:
        """``fn(items)``; raises what ``fn`` raised for the batch."""
        return await self._coalescer(list(items))

    def _run(self, calls: list[list[Any]]) -> list[list[Any]]:
        """One ``fn`` over every call's items, split back into one result list per call."""
        items = [item for call in calls for item in call]
        self.calls += 1
        results = list(self.fn(items))
        if len(results) != len(items):
            raise ValueError(f"batched function returned {len(results)} results for {len(items)}")
        out, start = [], 0
        for call in calls:
            out.append(results[start : start + len(call)])
            start += len(call)
        return out
