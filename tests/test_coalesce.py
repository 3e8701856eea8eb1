"""Coalescer: concurrent calls become batches; keys, size limits and errors."""

import anyio
import pytest

from turnrl.coalesce import Coalescer


async def call_all(coalescer, items):
    results = [None] * len(items)

    async def one(i):
        results[i] = await coalescer(items[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(items)):
            tg.start_soon(one, i)
    return results


@pytest.mark.anyio
async def test_concurrent_calls_share_one_batch():
    batches = []
    squares = Coalescer(lambda xs: batches.append(list(xs)) or [x * x for x in xs])
    assert await call_all(squares, [1, 2, 3, 4]) == [1, 4, 9, 16]
    assert batches == [[1, 2, 3, 4]]


@pytest.mark.anyio
async def test_keys_and_max_batch_size_split_batches():
    batches = []
    same = Coalescer(
        lambda xs: batches.append(list(xs)) or xs, key=lambda x: x % 2, max_batch_size=2
    )
    assert await call_all(same, [1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    assert sorted(map(sorted, batches)) == [[1, 3], [2, 4], [5]]
    assert all(len({x % 2 for x in b}) == 1 for b in batches)


@pytest.mark.anyio
async def test_every_caller_of_a_failed_batch_raises():
    def fail(xs):
        raise RuntimeError("boom")

    failing = Coalescer(fail)
    errors = []

    async def one(x):
        try:
            await failing(x)
        except RuntimeError as e:
            errors.append(str(e))

    async with anyio.create_task_group() as tg:
        for x in range(3):
            tg.start_soon(one, x)
    assert errors == ["boom"] * 3


@pytest.mark.anyio
async def test_a_wrong_number_of_results_is_an_error():
    short = Coalescer(lambda xs: xs[:-1])
    with pytest.raises(ValueError, match="returned 0 results for 1"):
        await short(1)
