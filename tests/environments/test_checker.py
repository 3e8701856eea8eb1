"""Tests for turnrl.environments.checker: check_env passes good envs, explains broken ones."""

import copy
import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from turnrl.environments import (
    ConversationEnvironment,
    EnvContractError,
    Environment,
    StepResult,
    Timeout,
    TurnLimit,
    check_env,
)
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.types import Message, Scenario, Turn, assistant, user

SCENARIOS = make_scenarios(n=3)


class Good(Environment):
    """A valid env: three steps, then terminated. Variants below break one rule each."""

    scenarios = (Scenario(id="s"),)

    def __init__(self) -> None:
        self.n = 0
        self.steps_taken = 0  # across episodes, to check max_steps

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        self.n = 0
        return [user("start")], {}

    async def step(self, message: Message) -> StepResult:
        self.n += 1
        self.steps_taken += 1
        return StepResult([user(f"n={self.n}")], 0.5, self.n >= 3, False, {})


class FakeAgent:
    async def respond(self, conversation: Sequence[Message]) -> Turn:
        return Turn(message=assistant("fine"), prompt_ids=[], completion_ids=[])


@pytest.mark.anyio
@pytest.mark.parametrize(
    "env",
    [
        Good(),
        ArithmeticEnvironment(SCENARIOS),
        TurnLimit(ArithmeticEnvironment(SCENARIOS), max_turns=2),
        Timeout(ArithmeticEnvironment(SCENARIOS), seconds=5),
        ConversationEnvironment(SCENARIOS, ["a", "b"]),
        ConversationEnvironment(SCENARIOS, lambda c, s: "more", max_turns=4),
        ConversationEnvironment(SCENARIOS, FakeAgent(), max_turns=2),
    ],
    ids=lambda env: type(env).__name__,
)
async def test_real_environments_pass(env):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an episode that ends warns of nothing
        report = await check_env(env)
    assert report.ended in ("terminated", "truncated")
    assert str(report).startswith(f"check_env: {type(env).__name__} follows the contract")


@pytest.mark.anyio
async def test_steps_stop_at_max_steps_for_endless_envs():
    env = ConversationEnvironment(SCENARIOS, lambda c, s: "more")  # never ends
    with pytest.warns(UserWarning, match="did not end an episode within max_steps=2 steps"):
        await check_env(env, max_steps=2)
    assert env._turns == 2  # the original's last episode stopped after 2 steps


@pytest.mark.anyio
async def test_an_episode_that_never_ends_is_reported_with_the_fix():
    env = ConversationEnvironment(SCENARIOS, lambda c, s: "more")  # never ends
    with pytest.warns(UserWarning) as caught:
        report = await check_env(env)
    message = str(caught[0].message)
    assert "ConversationEnvironment did not end an episode within max_steps=8" in message
    assert "terminated=True" in message and "TurnLimit(env, max_turns)" in message
    assert (report.ended, report.steps) == (None, 8)
    assert "had not ended after 8 steps" in str(report)


@pytest.mark.anyio
async def test_report_says_how_the_probe_episode_ended():
    terminated = await check_env(Good())  # three steps, then terminated
    assert (terminated.ended, terminated.steps, terminated.replayed) == ("terminated", 3, True)
    assert "ended terminated after 3 steps" in str(terminated)
    truncated = await check_env(TurnLimit(ConversationEnvironment(SCENARIOS, ["a"] * 9), 2))
    assert (truncated.ended, truncated.steps) == ("truncated", 2)


@pytest.mark.anyio
async def test_explicit_scenario_is_used():
    seen = []

    class Records(Good):
        scenarios = ()

        async def reset(self, *, seed=None, options=None):
            seen.append((seed, options))
            return await super().reset()

    scenario = Scenario(id="explicit")
    await check_env(Records(), scenario)
    assert seen[0] == (0, {"scenario": scenario})
    seen.clear()
    await check_env(Records())
    assert seen[0] == (0, None)  # no scenarios: options=None


@pytest.mark.anyio
async def test_max_steps_validated():
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        await check_env(Good(), max_steps=0)


class NotAnEnv:
    async def reset(self, *, seed=None, options=None):
        return [], {}

    async def step(self, message):
        return StepResult([], 0.0, True, False, {})


class SyncReset(Good):
    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        return [], {}


class SyncStep(Good):
    def step(self, message):  # type: ignore[override]
        return StepResult([], 0.0, True, False, {})


class SyncClose(Good):
    def close(self):  # type: ignore[override]
        pass


class BadScenarios(Good):
    scenarios = ("not a scenario",)  # type: ignore[assignment]


def returning_from_reset(value):
    class Env(Good):
        async def reset(self, *, seed=None, options=None):
            return value

    return Env()


def returning_from_step(value):
    class Env(Good):
        async def step(self, message):
            return value

    return Env()


def ok_step(**fields) -> StepResult:
    return StepResult([], 0.0, False, False, {})._replace(**fields)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("env", "part", "detail"),
    [
        (NotAnEnv(), "env:", "expected a turnrl Environment"),
        (SyncReset(), "reset:", "not a coroutine function"),
        (SyncStep(), "step:", "async def step"),
        (SyncClose(), "close:", "not a coroutine function"),
        (BadScenarios(), "scenarios:", "sequence of Scenario"),
        (returning_from_reset([user("hi")]), "reset:", "(observation, info)"),
        (returning_from_reset(("hi", {})), "reset observation:", "got str"),
        (returning_from_reset(([{"role": "user"}], {})), "reset observation:", "[0] must be"),
        (returning_from_reset(([], None)), "reset info:", "got NoneType"),
        (returning_from_step(([], 0.0, True, False)), "step:", "tuple of length 4"),
        (returning_from_step({"reward": 1.0}), "step:", "got dict"),
        (
            returning_from_step(ok_step(observation=user("x"))),
            "step observation:",
            "got turnrl.types.Message",
        ),
        (returning_from_step(ok_step(observation=[assistant("x")])), "step observation:", "role"),
        (returning_from_step(ok_step(reward=None)), "step reward:", "got NoneType"),
        (returning_from_step(ok_step(reward="1")), "step reward:", "got str"),
        (returning_from_step(ok_step(reward=True)), "step reward:", "got bool"),
        (returning_from_step(ok_step(reward=float("nan"))), "step reward:", "finite"),
        (
            returning_from_step(ok_step(terminated=np.bool_(True))),
            "step terminated:",
            "got numpy.bool",
        ),
        (returning_from_step(ok_step(truncated=0)), "step truncated:", "got int"),
        (returning_from_step(ok_step(info=None)), "step info:", "must be a dict"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
async def test_broken_environments_are_named(env, part, detail):
    with pytest.raises(EnvContractError) as e:
        await check_env(env)
    message = str(e.value)
    assert message.startswith(part), message
    assert detail in message, message
    assert "Fix:" in message


def test_env_contract_error_is_a_type_error():
    assert issubclass(EnvContractError, TypeError)


class CloneIsSelf(Good):
    def clone(self):
        return self


class CloneOtherType(Good):
    def clone(self):
        return Good()


class SharedState(Good):
    """Keeps its episode in a dict that a shallow-copy clone shares."""

    def __init__(self) -> None:
        self.state = {"n": 0}

    async def reset(self, *, seed=None, options=None):
        self.state["n"] = 0  # in place: clones see it
        return [user("start")], {}

    async def step(self, message):
        self.state["n"] += 1
        n = self.state["n"]
        return StepResult([user(f"n={n}")], 0.0, n >= 3, False, {})

    def clone(self):
        return copy.copy(self)


class SharedStateRaises(SharedState):
    async def step(self, message):
        if self.state["n"] >= 3:
            raise RuntimeError("step after the episode ended")
        return await super().step(message)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("env", "detail"),
    [
        (CloneIsSelf(), "returned the environment itself"),
        (CloneOtherType(), "returned Good, expected CloneOtherType"),
        (SharedState(), "changed the original's episode"),
        (SharedStateRaises(), "the original's step() raised RuntimeError"),
    ],
    ids=["self", "other-type", "shared-differs", "shared-raises"],
)
async def test_broken_clones_are_named(env, detail):
    with pytest.raises(EnvContractError) as e:
        await check_env(env)
    assert str(e.value).startswith("clone:")
    assert detail in str(e.value)


@pytest.mark.anyio
async def test_broken_clone_inside_a_wrapper_is_caught():
    with pytest.raises(EnvContractError, match="changed the original's episode"):
        await check_env(TurnLimit(SharedState(), max_turns=5))


@pytest.mark.anyio
async def test_nondeterministic_env_skips_the_replay_comparison():
    counter = itertools.count()

    class Varies(Good):
        async def reset(self, *, seed=None, options=None):
            return [user(f"episode {next(counter)}")], {}

    report = await check_env(Varies())
    assert next(counter) == 2  # the reference and the clone's episode only
    assert not report.replayed and "clone independence was not compared" in str(report)
