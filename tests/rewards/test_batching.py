"""Tests for turnrl.rewards.batching.CallBatcher."""

import anyio
import pytest

from turnrl.rewards.batching import CallBatcher


async def gather(batcher, *calls):
    results = [None] * len(calls)

    async def run(i, items):
        try:
            results[i] = await batcher(items)
        except Exception as e:
            results[i] = e

    async with anyio.create_task_group() as tg:
        for i, items in enumerate(calls):
            tg.start_soon(run, i, items)
    return results


@pytest.mark.anyio
async def test_concurrent_calls_share_one_batch_and_get_their_own_results():
    seen = []
    batcher = CallBatcher(lambda xs: seen.append(list(xs)) or [x * 10 for x in xs])
    assert await gather(batcher, [1, 2], [3], [4, 5, 6]) == [[10, 20], [30], [40, 50, 60]]
    assert seen == [[1, 2, 3, 4, 5, 6]] and batcher.calls == 1
    assert await batcher([7]) == [70] and batcher.calls == 2  # a lone call runs on its own


@pytest.mark.anyio
async def test_a_failing_batch_raises_in_every_caller_and_the_next_batch_runs():
    def fn(xs):
        if 0 in xs:
            raise ZeroDivisionError("zero")
        return [1 / x for x in xs]

    batcher = CallBatcher(fn)
    first, second = await gather(batcher, [1], [0])
    assert isinstance(first, ZeroDivisionError) and isinstance(second, ZeroDivisionError)
    assert await batcher([4]) == [0.25]
    short = CallBatcher(lambda xs: xs[:1])
    with pytest.raises(ValueError, match="returned 1 results for 2"):
        await short([1, 2])
