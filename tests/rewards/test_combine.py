"""Tests for turnrl.rewards.combine: weighted sums and score_groups."""

from __future__ import annotations

import importlib
import math

import anyio
import pytest

from turnrl.rewards import (
    RewardResult,
    WeightedReward,
    combine,
    group_reward_function,
    reward_function,
    score_groups,
)
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, Turn

# `turnrl.rewards.combine` the attribute is the function; the module is in sys.modules.
combine_module = importlib.import_module("turnrl.rewards.combine")

pytestmark = pytest.mark.anyio


def make_trajectory(
    text: str, env_rewards: list[float] | None = None, error: str | None = None, sid: str = "s"
) -> Trajectory:
    env_rewards = [0.0] if env_rewards is None else env_rewards
    return Trajectory(
        scenario=Scenario(id=sid, data={"answer": 7}),
        turns=[
            Turn(
                message=Message(role="assistant", content=text, token_ids=[5, 2]),
                prompt_ids=[1, 2, 3],
                completion_ids=[5, 2],
                logprobs=[-0.1, -0.2],
            )
            for _ in env_rewards
        ],
        env_messages=[[] for _ in env_rewards],
        env_rewards=env_rewards,
        error=error,
    )


def make_group(*trajectories: Trajectory | str, sid: str = "s") -> TrajectoryGroup:
    items = [make_trajectory(t, sid=sid) if isinstance(t, str) else t for t in trajectories]
    return TrajectoryGroup(scenario=Scenario(id=sid, data={"answer": 7}), trajectories=items)


def length(trajectory: Trajectory) -> float:
    return float(len(trajectory.final_response))


def is_seven(trajectory: Trajectory) -> float:
    return float(trajectory.final_response == "7")


def ten(trajectory: Trajectory) -> float:
    return 10.0


class FakeLog:
    """Records warning events, standing in for the module's structlog logger."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def warning(self, event: str, **kw) -> None:
        self.events.append((event, kw))


@pytest.fixture
def fake_log(monkeypatch) -> FakeLog:
    log = FakeLog()
    monkeypatch.setattr(combine_module, "log", log)
    return log


# --- combine -------------------------------------------------------------------


async def test_weighted_sum_with_negative_and_zero_weights():
    reward = combine({is_seven: 2.0, length: -0.5, ten: 0.0})

    results = await reward(make_group("7", "abcd"))

    # "7":    2 * 1 - 0.5 * 1 + 0 * 10 = 1.5
    # "abcd": 2 * 0 - 0.5 * 4 + 0 * 10 = -2.0
    assert results == [
        RewardResult(1.5, components={"is_seven": 1.0, "length": 1.0, "ten": 10.0}),
        RewardResult(-2.0, components={"is_seven": 0.0, "length": 4.0, "ten": 10.0}),
    ]


async def test_three_spellings_agree():
    group = make_group("7", "abc")
    spellings = [
        combine(is_seven, length, weights=[1.0, 0.5]),
        combine({is_seven: 1.0, length: 0.5}),
        WeightedReward([(is_seven, 1.0), (length, 0.5)]),
    ]
    # "7": 1 + 0.5 * 1 = 1.5; "abc": 0 + 0.5 * 3 = 1.5
    for reward in spellings:
        assert [r.score for r in await reward(group)] == [1.5, 1.5]
        assert reward.weights == {"is_seven": 1.0, "length": 0.5}
        assert reward.name == "combined"


async def test_default_weights_are_one():
    reward = combine(is_seven, length, name="total")
    # "7": 1 + 1 = 2.0
    assert [r.score for r in await reward(make_group("7"))] == [2.0]
    assert reward.weights == {"is_seven": 1.0, "length": 1.0}
    assert reward.name == "total"


def test_duplicate_names_rejected_and_renaming_fixes_it():
    with pytest.raises(ValueError, match="two reward components are named 'length'"):
        combine(length, length)
    with pytest.raises(ValueError, match="named 'length'"):
        combine(length, reward_function(is_seven, name="length"))
    assert combine(length, reward_function(length, name="length2")).weights == {
        "length": 1.0,
        "length2": 1.0,
    }


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_rejected(weight):
    with pytest.raises(ValueError, match="must be finite"):
        combine(length, weights=[weight])


def test_bad_construction():
    with pytest.raises(TypeError, match="real number"):
        combine({length: "1"})
    with pytest.raises(ValueError, match="2 weights for 1"):
        combine(length, weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="not both"):
        combine({length: 1.0}, weights=[1.0])
    with pytest.raises(ValueError, match="at least one"):
        combine()
    with pytest.raises(ValueError, match="reserved"):
        combine(reward_function(length, name="env_return"))
    with pytest.raises(ValueError, match="reserved"):
        combine(length, name="length")


async def test_component_group_failure_errors_every_trajectory():
    @group_reward_function
    def judge(group: TrajectoryGroup) -> list[float]:
        raise TimeoutError("judge timed out")

    results = await combine(is_seven, judge)(make_group("7", "8"))

    assert [r.error for r in results] == ["judge: raised TimeoutError: judge timed out"] * 2


async def test_component_trajectory_error_marks_only_that_trajectory():
    @reward_function
    def picky(trajectory: Trajectory) -> float:
        if trajectory.final_response == "bad":
            raise ValueError("unparsable")
        return 0.5

    results = await combine(is_seven, picky, weights=[1.0, 2.0])(make_group("7", "bad"))

    # "7": 1 * 1 + 2 * 0.5 = 2.0
    assert results[0] == RewardResult(2.0, components={"is_seven": 1.0, "picky": 0.5})
    assert results[1].error == "picky: raised ValueError: unparsable"


async def test_two_component_errors_are_joined():
    def none(trajectory: Trajectory):
        return None

    def nan(trajectory: Trajectory):
        return math.nan

    [result] = await combine(none, nan)(make_group("x"))
    assert result.error == (
        "none: returned None, expected a finite number; nan: returned nan, expected a finite number"
    )


async def test_weight_zero_component_error_is_logged_not_fatal(fake_log):
    def broken(trajectory: Trajectory) -> float:
        raise RuntimeError("metric bug")

    [result] = await combine({is_seven: 1.0, broken: 0.0})(make_group("7"))

    assert result == RewardResult(1.0, components={"is_seven": 1.0})
    assert fake_log.events == [
        (
            "reward_metric_failed",
            {"scenario_id": "s", "error": "broken: raised RuntimeError: metric bug"},
        )
    ]


async def test_sub_components_are_prefixed_by_component_name():
    inner = combine({is_seven: 1.0, length: 1.0}, name="inner")
    reward = combine({inner: 0.5, ten: 1.0})

    [result] = await reward(make_group("7"))

    # inner = 1 + 1 = 2; total = 0.5 * 2 + 1 * 10 = 11
    assert result == RewardResult(
        11.0,
        components={"inner": 2.0, "inner/is_seven": 1.0, "inner/length": 1.0, "ten": 10.0},
    )


async def test_components_run_concurrently():
    # Each judge waits for the other to start: run one after the other, they hang.
    started = {"a": anyio.Event(), "b": anyio.Event()}

    def judge(me: str, other: str):
        @group_reward_function(name=me)
        async def wait_for_other(group: TrajectoryGroup) -> list[float]:
            started[me].set()
            await started[other].wait()
            return [1.0] * len(group)

        return wait_for_other

    with anyio.fail_after(2):
        results = await combine(judge("a", "b"), judge("b", "a"))(make_group("x"))
    assert [r.score for r in results] == [2.0]


# --- score_groups ----------------------------------------------------------------


async def test_score_groups_adds_env_return_and_reports_components():
    group = make_group(
        make_trajectory("7", env_rewards=[0.5, 0.25]),
        make_trajectory("abcd", env_rewards=[1.0]),
    )
    reward = combine({is_seven: 2.0, length: -0.5, ten: 0.0})

    metrics = await score_groups([group], reward)

    first, second = group.trajectories
    # first:  env 0.5 + 0.25 = 0.75; reward 2 * 1 - 0.5 * 1 = 1.5; total 2.25
    # second: env 1.0;               reward 2 * 0 - 0.5 * 4 = -2.0; total -1.0
    assert first.reward == 2.25
    assert second.reward == -1.0
    assert first.reward_components == {
        "env_return": 0.75,
        "combined": 1.5,
        "is_seven": 1.0,
        "length": 1.0,
        "ten": 10.0,
    }
    assert metrics == {
        "reward/env_return_mean": (0.75 + 1.0) / 2,
        "reward/combined_mean": (1.5 - 2.0) / 2,
        "reward/is_seven_mean": 0.5,
        "reward/length_mean": (1 + 4) / 2,
        "reward/ten_mean": 10.0,
        "reward/failed": 0.0,
    }


async def test_score_groups_without_reward_uses_env_return():
    group = make_group(make_trajectory("x", env_rewards=[1.0, -0.5]), make_trajectory("y"))

    metrics = await score_groups([group], None)

    # env returns: 1 - 0.5 = 0.5 and 0.0
    assert [t.reward for t in group] == [0.5, 0.0]
    assert [t.reward_components for t in group] == [{"env_return": 0.5}, {"env_return": 0.0}]
    assert metrics == {"reward/env_return_mean": 0.25, "reward/failed": 0.0}


async def test_score_groups_single_function_logged_under_its_name():
    group = make_group("7", "8")
    metrics = await score_groups([group], reward_function(is_seven))
    assert group.trajectories[0].reward_components == {"env_return": 0.0, "is_seven": 1.0}
    assert metrics["reward/is_seven_mean"] == 0.5


async def test_score_groups_skips_already_failed_trajectories():
    seen_sizes = []

    @group_reward_function
    def spy(group: TrajectoryGroup) -> list[float]:
        seen_sizes.append(len(group))
        return [1.0] * len(group)

    crashed = make_trajectory("7", error="env: raised OSError")
    group = make_group("7", crashed, "8")
    all_failed = make_group(make_trajectory("x", error="env: boom"), sid="t")

    metrics = await score_groups([group, all_failed], spy)

    assert seen_sizes == [2]  # only the two ok trajectories of the first group
    assert crashed.reward is None
    assert crashed.reward_components == {}
    assert crashed.error == "env: raised OSError"
    assert [group.trajectories[k].reward for k in (0, 2)] == [1.0, 1.0]
    assert metrics["reward/failed"] == 0.0


async def test_score_groups_marks_scoring_errors_and_logs_once(fake_log):
    @reward_function
    def picky(trajectory: Trajectory) -> float:
        if trajectory.final_response == "bad":
            raise ValueError("unparsable")
        return 3.0

    groups = [make_group("ok", "bad", sid="a"), make_group("bad", sid="b")]

    metrics = await score_groups(groups, picky)

    error = "picky: raised ValueError: unparsable"
    failed = [groups[0].trajectories[1], groups[1].trajectories[0]]
    assert all(t.error == error and t.reward is None for t in failed)
    assert groups[0].trajectories[0].reward == 3.0
    # Means are over the one trajectory scored without error.
    assert metrics == {
        "reward/env_return_mean": 0.0,
        "reward/picky_mean": 3.0,
        "reward/failed": 2.0,
    }
    assert fake_log.events == [
        ("reward_failed", {"scenario_id": "a", "error": error}),
        ("reward_failed", {"scenario_id": "b", "error": error}),
    ]


async def test_score_groups_survives_a_raising_reward_function(fake_log):
    class Broken:
        name = "broken"

        async def __call__(self, group: TrajectoryGroup) -> list[RewardResult]:
            raise RuntimeError("oops")

    group = make_group("a", "b")
    metrics = await score_groups([group], Broken())

    assert [t.error for t in group] == ["broken: raised RuntimeError: oops"] * 2
    assert metrics["reward/failed"] == 2.0
    assert len(fake_log.events) == 2


async def test_score_groups_scores_groups_concurrently():
    # A group-level judge that waits until every group has arrived: scoring the
    # groups one after the other would hang until fail_after fires.
    arrived = 0
    all_arrived = anyio.Event()

    @group_reward_function
    async def barrier(group: TrajectoryGroup) -> list[float]:
        nonlocal arrived
        arrived += 1
        if arrived == 3:
            all_arrived.set()
        await all_arrived.wait()
        return [1.0] * len(group)

    groups = [make_group("x", sid=sid) for sid in "abc"]
    with anyio.fail_after(2):
        metrics = await score_groups(groups, barrier)
    assert metrics["reward/barrier_mean"] == 1.0
