"""Tests for turnrl.environments.base: StepResult, Environment defaults, scenario_from_options."""

from typing import Any

import pytest

from turnrl.environments import Environment, StepResult, scenario_from_options
from turnrl.types import Message, Scenario, assistant, user


class Counter(Environment):
    """Counts steps; keeps a mutable list to check deep-copy clones."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        self.seen = []
        return [user("go")], {}

    async def step(self, message: Message) -> StepResult:
        self.seen.append(message.content)
        return StepResult([], float(len(self.seen)), False, False, {})


class Incomplete(Environment):
    pass


def test_step_result_unpacks_like_gymnasium_5_tuple():
    result = StepResult([user("hi")], 0.5, True, False, {"k": 1})
    observation, reward, terminated, truncated, info = result
    assert observation == [user("hi")]
    assert (reward, terminated, truncated, info) == (0.5, True, False, {"k": 1})
    assert result.truncated is False and result.terminated is True
    assert isinstance(result, tuple) and len(result) == 5


@pytest.mark.anyio
async def test_reset_and_step_not_implemented_name_the_subclass():
    env = Incomplete()
    with pytest.raises(NotImplementedError, match=r"Incomplete.*reset"):
        await env.reset()
    with pytest.raises(NotImplementedError, match=r"Incomplete.*step"):
        await env.step(assistant("x"))


@pytest.mark.anyio
async def test_default_clone_is_an_independent_deep_copy():
    env = Counter()
    await env.reset()
    await env.step(assistant("a"))
    clone = env.clone()
    assert clone is not env and type(clone) is Counter
    result = await clone.step(assistant("b"))
    assert result.reward == 2.0  # the clone carries the original's step, then its own
    assert env.seen == ["a"]
    assert clone.seen == ["a", "b"]


def test_default_clone_shares_the_scenarios_and_copies_the_rest():
    env = Counter()
    env.scenarios = [Scenario(id=str(i)) for i in range(3)]
    env.seen = ["a"]
    clone = env.clone()
    assert clone.scenarios is env.scenarios  # read-only task data: shared, not copied
    assert clone.seen == ["a"] and clone.seen is not env.seen


@pytest.mark.anyio
async def test_close_default_is_a_no_op_and_scenarios_default_empty():
    env = Counter()
    assert await env.close() is None
    assert tuple(env.scenarios) == ()


def test_scenario_from_options_returns_the_scenario():
    s = Scenario(id="s1")
    assert scenario_from_options({"scenario": s}) is s


@pytest.mark.parametrize(
    ("options", "detail"),
    [
        (None, "options=None"),
        ({"seed": 3}, "without a 'scenario' key"),
        ({"scenario": "s1"}, "of type str"),
    ],
)
def test_scenario_from_options_errors_explain(options, detail):
    with pytest.raises(ValueError, match="reset\\(\\) needs a scenario") as e:
        scenario_from_options(options)
    assert detail in str(e.value)
