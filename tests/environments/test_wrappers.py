"""Tests for turnrl.environments.wrappers: Wrapper, TurnLimit, Timeout."""

import math
from typing import Any

import anyio
import pytest

from turnrl.environments import (
    Environment,
    EnvTimeoutError,
    StepResult,
    Timeout,
    TurnLimit,
    Wrapper,
)
from turnrl.types import Message, Scenario, assistant, user


class Steps(Environment):
    """Counts steps; terminates at step ``terminate_at``; sleeps ``delay`` s per call."""

    scenarios = (Scenario(id="only"),)

    def __init__(self, terminate_at: int | None = None, delay: float = 0.0) -> None:
        self.terminate_at = terminate_at
        self.delay = delay
        self.count = 0
        self.closed = False

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        await anyio.sleep(self.delay)
        self.count = 0
        return [user("start")], {"seed": seed}

    async def step(self, message: Message) -> StepResult:
        await anyio.sleep(self.delay)
        self.count += 1
        done = self.count == self.terminate_at
        return StepResult([user(f"n={self.count}")], 1.0, done, False, {"n": self.count})

    async def close(self) -> None:
        self.closed = True


class WithModel(Steps):
    """Shares ``model`` between clones, as an env holding a model would."""

    def __init__(self) -> None:
        super().__init__()
        self.model = object()

    def clone(self) -> "WithModel":
        new = WithModel()
        new.model = self.model
        return new


A = assistant("a")


@pytest.mark.anyio
async def test_turn_limit_truncates_on_the_max_turns_step():
    env = TurnLimit(Steps(), max_turns=2)
    await env.reset()
    first = await env.step(A)
    assert (first.terminated, first.truncated) == (False, False)
    assert "turn_limit" not in first.info
    second = await env.step(A)
    assert (second.terminated, second.truncated) == (False, True)
    assert second.info == {"n": 2, "turn_limit": True}
    assert second.observation == [user("n=2")]  # the true next observation is kept


@pytest.mark.anyio
async def test_turn_limit_does_not_truncate_a_terminating_step():
    env = TurnLimit(Steps(terminate_at=2), max_turns=2)
    await env.reset()
    await env.step(A)
    result = await env.step(A)
    assert (result.terminated, result.truncated) == (True, False)
    assert "turn_limit" not in result.info


@pytest.mark.anyio
async def test_turn_limit_counter_restarts_on_reset():
    env = TurnLimit(Steps(), max_turns=1)
    await env.reset()
    assert (await env.step(A)).truncated
    await env.reset()
    assert env.elapsed_turns == 0
    assert (await env.step(A)).truncated  # one step after reset, not two


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_turn_limit_rejects_bad_max_turns(bad):
    with pytest.raises(ValueError, match="max_turns must be an integer >= 1"):
        TurnLimit(Steps(), max_turns=bad)


def test_wrapper_rejects_non_environment():
    with pytest.raises(TypeError, match="TurnLimit wraps a turnrl Environment"):
        TurnLimit(object(), max_turns=1)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_wrapper_delegates_scenarios_reset_step_close():
    inner = Steps()
    env = Wrapper(inner)
    assert env.scenarios is Steps.scenarios
    assert env.unwrapped is inner
    assert await env.reset(seed=7) == ([user("start")], {"seed": 7})
    assert (await env.step(A)).info == {"n": 1}
    await env.close()
    assert inner.closed


@pytest.mark.anyio
async def test_wrapper_clone_uses_inner_clone_and_resets_turn_counter():
    env = Timeout(TurnLimit(WithModel(), max_turns=3), seconds=5)
    await env.reset()
    await env.step(A)
    clone = env.clone()
    assert type(clone) is Timeout and type(clone.env) is TurnLimit
    assert clone.env is not env.env and clone.unwrapped is not env.unwrapped
    assert clone.unwrapped.model is env.unwrapped.model  # WithModel.clone() was used
    assert clone.env.elapsed_turns == 0
    assert clone.env.max_turns == 3 and clone.seconds == 5.0

    await clone.reset()
    for _ in range(3):
        await clone.step(A)
    assert env.env.elapsed_turns == 1 and env.unwrapped.count == 1
    second = await env.step(A)
    assert not second.truncated  # the original is at turn 2 of 3


@pytest.mark.anyio
async def test_timeout_passes_fast_calls_through():
    env = Timeout(Steps(), seconds=1.0)
    observation, _ = await env.reset()
    assert observation == [user("start")]
    assert (await env.step(A)).info == {"n": 1}


@pytest.mark.anyio
async def test_timeout_raises_env_timeout_error_naming_method_and_limit():
    env = Timeout(Steps(delay=10.0), seconds=0.05)
    with anyio.fail_after(5):  # the test itself must not hang if Timeout fails
        with pytest.raises(EnvTimeoutError, match=r"Steps\.reset\(\) .* 0\.05 s"):
            await env.reset()
        with pytest.raises(TimeoutError, match=r"Steps\.step\(\) .* 0\.05 s"):
            await env.step(A)


class RaisesTimeout(Steps):
    async def step(self, message: Message) -> StepResult:
        raise TimeoutError("upstream API timed out")


@pytest.mark.anyio
async def test_timeout_lets_the_environments_own_timeout_error_through():
    env = Timeout(RaisesTimeout(), seconds=5)
    with pytest.raises(TimeoutError, match="upstream API") as e:
        await env.step(A)
    assert not isinstance(e.value, EnvTimeoutError)


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "1", True])
def test_timeout_rejects_bad_seconds(bad):
    with pytest.raises(ValueError, match="seconds must be a positive"):
        Timeout(Steps(), seconds=bad)
