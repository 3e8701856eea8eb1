"""Tests for turnrl.rewards.base: lifting plain functions into RewardFunctions."""

from __future__ import annotations

import math

import anyio
import numpy as np
import pytest

from turnrl.rewards import RewardFunction, RewardResult, group_reward_function, reward_function
from turnrl.rewards.base import check_score, score_group
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, Turn

pytestmark = pytest.mark.anyio


def make_group(*responses: str) -> TrajectoryGroup:
    """A group with one single-turn trajectory per response."""
    scenario = Scenario(id="s", data={"answer": 7})
    trajectories = [
        Trajectory(
            scenario=scenario,
            turns=[
                Turn(
                    message=Message(role="assistant", content=text, token_ids=[5, 2]),
                    prompt_ids=[1, 2, 3],
                    completion_ids=[5, 2],
                    logprobs=[-0.1, -0.2],
                )
            ],
            env_messages=[[]],
            env_rewards=[0.0],
        )
        for text in responses
    ]
    return TrajectoryGroup(scenario=scenario, trajectories=trajectories)


def scores(results: list[RewardResult]) -> list[float]:
    return [r.score for r in results]


# --- reward_function ---------------------------------------------------------


async def test_bare_decorator_on_sync_function():
    @reward_function
    def is_seven(trajectory: Trajectory) -> float:
        return 1.0 if trajectory.final_response == "7" else 0.0

    results = await is_seven(make_group("7", "8", "7"))

    assert is_seven.name == "is_seven"
    assert isinstance(is_seven, RewardFunction)
    assert results == [RewardResult(1.0), RewardResult(0.0), RewardResult(1.0)]


async def test_named_decorator_on_async_function():
    @reward_function(name="length")
    async def response_length(trajectory: Trajectory) -> float:
        await anyio.sleep(0)
        return len(trajectory.final_response)

    results = await response_length(make_group("ab", "abcd"))

    assert response_length.name == "length"
    assert isinstance(response_length, RewardFunction)
    assert scores(results) == [2.0, 4.0]
    assert all(r.error is None for r in results)


async def test_call_form_keeps_original_function_as_fn():
    def one(trajectory: Trajectory) -> float:
        return 1.0

    reward = reward_function(one, name="uno")

    assert reward.name == "uno"
    assert reward.fn is one
    assert scores(await reward(make_group("a"))) == [1.0]


async def test_async_trajectories_are_scored_concurrently():
    # The first trajectory waits for an event that only the second one sets:
    # scored one after the other, this would hang until fail_after fires.
    second_started = anyio.Event()

    @reward_function
    async def handshake(trajectory: Trajectory) -> float:
        if trajectory.final_response == "first":
            await second_started.wait()
        else:
            second_started.set()
        return 1.0

    with anyio.fail_after(2):
        results = await handshake(make_group("first", "second"))
    assert scores(results) == [1.0, 1.0]


async def test_bool_and_numpy_scores_are_numbers():
    values = iter([True, np.float64(0.25), 3])

    @reward_function
    def mixed(trajectory: Trajectory) -> float:
        return next(values)

    assert scores(await mixed(make_group("a", "b", "c"))) == [1.0, 0.25, 3.0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "bad: returned None, expected a finite number"),
        (math.nan, "bad: returned nan, expected a finite number"),
        (math.inf, "bad: returned inf, expected a finite number"),
        ("1.0", "bad: returned str '1.0', expected a finite number"),
    ],
)
async def test_bad_return_errors_only_its_trajectory(value, message):
    @reward_function
    def bad(trajectory: Trajectory):
        return value if trajectory.final_response == "x" else 0.5

    results = await bad(make_group("ok", "x", "ok"))

    assert results[0] == RewardResult(0.5)
    assert results[1] == RewardResult(0.0, error=message)
    assert results[2] == RewardResult(0.5)


async def test_raise_errors_only_its_trajectory_sync_and_async():
    @reward_function
    def divide(trajectory: Trajectory) -> float:
        return 1 / len(trajectory.final_response)

    @reward_function
    async def adivide(trajectory: Trajectory) -> float:
        return 1 / len(trajectory.final_response)

    for reward in (divide, adivide):
        results = await reward(make_group("ab", "", "abcd"))
        # 1 / 2 = 0.5, 1 / 0 raises, 1 / 4 = 0.25
        assert scores(results) == [0.5, 0.0, 0.25]
        assert results[1].error == f"{reward.name}: raised ZeroDivisionError: division by zero"
        assert results[0].error is None and results[2].error is None


def test_reward_function_rejects_non_callable_and_empty_name():
    with pytest.raises(TypeError, match="callable"):
        reward_function(3)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="non-empty name"):
        reward_function(lambda t: 1.0, name="")


def test_check_score():
    assert check_score(False) == 0.0
    assert check_score(np.int64(2)) == 2.0
    with pytest.raises(ValueError, match="returned list"):
        check_score([1.0])


# --- group_reward_function ---------------------------------------------------


async def test_group_function_sync_bare():
    @group_reward_function
    def rank(group: TrajectoryGroup) -> list[float]:
        # Longest response gets 1.0: lengths 1, 3, 2 -> [0, 1, 0]
        lengths = [len(t.final_response) for t in group]
        return [float(n == max(lengths)) for n in lengths]

    assert rank.name == "rank"
    assert isinstance(rank, RewardFunction)
    assert scores(await rank(make_group("a", "abc", "ab"))) == [0.0, 1.0, 0.0]


async def test_group_function_async_named_and_numpy_return():
    @group_reward_function(name="judge")
    async def judge(group: TrajectoryGroup) -> np.ndarray:
        return np.array([0.5, -1.0])

    results = await judge(make_group("a", "b"))
    assert judge.name == "judge"
    assert results == [RewardResult(0.5), RewardResult(-1.0)]


async def test_group_function_length_mismatch_errors_every_trajectory():
    @group_reward_function
    def short(group: TrajectoryGroup) -> list[float]:
        return [1.0]

    results = await short(make_group("a", "b"))

    error = "short: returned 1 scores for a group of 2"
    assert results == [RewardResult(0.0, error=error)] * 2


async def test_group_function_raise_or_scalar_errors_every_trajectory():
    @group_reward_function
    def boom(group: TrajectoryGroup) -> list[float]:
        raise RuntimeError("judge down")

    @group_reward_function
    def scalar(group: TrajectoryGroup) -> float:
        return 1.0

    assert [r.error for r in await boom(make_group("a", "b"))] == [
        "boom: raised RuntimeError: judge down"
    ] * 2
    for result in await scalar(make_group("a", "b")):
        assert result.error is not None and result.error.startswith("scalar: returned float")


async def test_group_function_bad_value_errors_only_its_trajectory():
    @group_reward_function
    def partly(group: TrajectoryGroup) -> list[float]:
        return [1.0, math.nan, None]

    results = await partly(make_group("a", "b", "c"))

    assert results[0] == RewardResult(1.0)
    assert results[1].error == "partly: returned nan, expected a finite number"
    assert results[2].error == "partly: returned None, expected a finite number"


async def test_group_function_not_called_on_empty_group():
    calls = []

    @group_reward_function
    def spy(group: TrajectoryGroup) -> list[float]:
        calls.append(len(group))
        return []

    assert await spy(TrajectoryGroup(scenario=Scenario(id="s"), trajectories=[])) == []
    assert calls == []


# --- score_group: the guard around hand-written RewardFunctions ---------------


class Custom:
    """A hand-written RewardFunction returning a fixed answer (or raising it)."""

    name = "custom"

    def __init__(self, answer):
        self.answer = answer

    async def __call__(self, group: TrajectoryGroup) -> list[RewardResult]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_score_group_passes_good_results_through():
    results = [RewardResult(1.0, components={"a": 2.0}), RewardResult(0.0, error="custom: x")]
    assert await score_group(Custom(results), make_group("a", "b")) == results


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (ValueError("no"), "custom: raised ValueError: no"),
        ([RewardResult(1.0)], "custom: returned 1 results for a group of 2"),
        ([1.0, 2.0], "custom: returned float, expected RewardResult"),
    ],
)
async def test_score_group_turns_group_failures_into_errors(answer, error):
    results = await score_group(Custom(answer), make_group("a", "b"))
    assert results == [RewardResult(0.0, error=error)] * 2


async def test_score_group_rejects_non_finite_result_score():
    results = await score_group(
        Custom([RewardResult(math.nan), RewardResult(2.0)]), make_group("a", "b")
    )
    assert results[0].error is not None and results[0].error.startswith("custom: bad")
    assert results[1] == RewardResult(2.0)
