"""Tests for turnrl.environments.from_gym and gym_api: the codec, GymEnvironment, TextGymEnv."""

import doctest
import threading
from collections.abc import Sequence
from typing import Any

import gymnasium
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env

from turnrl.environments import TurnLimit, check_env
from turnrl.environments import from_gym as gym_module
from turnrl.environments.from_gym import (
    ActionParseError,
    DiscreteCodec,
    GymEnvironment,
    TextCodec,
    seeded_scenarios,
)
from turnrl.environments.to_gym import TextGymEnv
from turnrl.training.rollout import run_episode
from turnrl.types import Message, Scenario, Turn, assistant, system, user

ACTIONS = ("left", "down", "right", "up")  # FrozenLake's action order
# The shortest route on the default 4x4 map (S at 0, G at 15, holes at 5, 7, 11, 12).
ROUTE = ("down", "down", "right", "right", "down", "right")
LAKE = Scenario(id="4x4")


def lake(**kwargs: Any) -> GymEnvironment:
    codec = DiscreteCodec(ACTIONS, instructions="Reach G.")
    kwargs.setdefault("scenarios", [LAKE])
    make_kwargs = {"is_slippery": False, **kwargs.pop("make_kwargs", {})}
    return GymEnvironment("FrozenLake-v1", codec, make_kwargs=make_kwargs, **kwargs)


async def start(env: GymEnvironment, scenario: Scenario = LAKE) -> list[Message]:
    observation, _ = await env.reset(seed=0, options={"scenario": scenario})
    return observation


def position(env: GymEnvironment) -> int:
    return int(env.gym_env.unwrapped.s)


class Recorder(gymnasium.Env):
    """Records how it was made, reset, stepped and closed. Reward = the action."""

    made: list["Recorder"] = []  # noqa: RUF012 (shared on purpose: every instance made)

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.action_space = spaces.Discrete(3)
        self.observation_space = spaces.Discrete(10)
        self.resets: list[tuple[int | None, dict | None]] = []
        self.threads: list[int] = []
        self.closed = False
        Recorder.made.append(self)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.resets.append((seed, options))
        self.threads.append(threading.get_ident())
        return 0, {}

    def step(self, action):
        self.threads.append(threading.get_ident())
        return int(action), float(action), action == 2, False, {}

    def close(self):
        self.closed = True

    def __deepcopy__(self, memo):
        raise AssertionError("a gym env may hold resources: it must never be deep-copied")


@pytest.fixture
def recorder():
    Recorder.made = []
    return Recorder


# -- DiscreteCodec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("left", 0),
        ("down", 1),
        ("  Right.", 2),
        ("UP", 3),
        ("I go down", 1),
        ("2", 2),
        ("action: 3!", 3),
        ("left, then up", 0),  # the first match wins
        ("3 then left", 3),
        ("upon reflection, down", 1),  # "up" inside "upon" is no action
    ],
)
def test_codec_parses_names_case_insensitively_and_indices(text, action):
    assert DiscreteCodec(ACTIONS).parse_action(text) == action


@pytest.mark.parametrize("text", ["", "42", "x3", "-1", "sideways", "lefty", "4 7"])
def test_codec_rejects_garbage_with_a_message_listing_the_actions(text):
    with pytest.raises(ActionParseError) as e:
        DiscreteCodec(ACTIONS).parse_action(text)
    assert str(e.value) == "Invalid action. Reply with one of: left, down, right, up (or 0-3)."


def test_codec_options_start_unnamed_and_no_index():
    assert DiscreteCodec(["a", "b"], start=5).parse_action("b") == 6
    assert DiscreteCodec(3).parse_action("2") == 2
    assert DiscreteCodec(3).error_text == "Invalid action. Reply with one of: 0-2."
    names_only = DiscreteCodec(ACTIONS, accept_index=False)
    with pytest.raises(ActionParseError, match=r"left, down, right, up\.$"):
        names_only.parse_action("1")


def test_codec_observation_text_and_instructions():
    import numpy as np

    codec = DiscreteCodec(ACTIONS, render=lambda s: f"at {s!r}", instructions="Go.")
    assert codec.observation_text(np.int64(4), {}) == "at 4"  # numpy ints become int
    assert codec.instructions() == "Go."
    assert DiscreteCodec(ACTIONS).observation_text(7, {}) == "7"
    assert DiscreteCodec(ACTIONS).instructions() is None
    assert isinstance(codec, TextCodec)


@pytest.mark.parametrize("actions", [[], ["a", "A"], ["a", " "], 0])
def test_codec_rejects_bad_action_names(actions):
    with pytest.raises(ValueError, match="distinct non-empty"):
        DiscreteCodec(actions)


def test_codec_refuses_ambiguous_settings():
    with pytest.raises(ValueError, match="accept_index"):
        DiscreteCodec(4, accept_index=False)
    with pytest.raises(ValueError, match="look like indices"):
        DiscreteCodec(["1", "0"])  # would "1" be action 0 or 1?
    assert DiscreteCodec(["1", "0"], accept_index=False).parse_action("0") == 1


def test_codec_prefers_the_longer_of_two_names_at_the_same_place():
    codec = DiscreteCodec(["move", "move up"], accept_index=False)
    assert codec.parse_action("Move up!") == 1 and codec.parse_action("move down") == 0


def test_doctests():
    results = doctest.testmod(gym_module)
    assert results.attempted >= 2 and results.failed == 0


# -- GymEnvironment on FrozenLake ----------------------------------------------------------


@pytest.mark.anyio
async def test_scripted_route_reaches_the_goal():
    env = lake()
    assert await start(env) == [system("Reach G."), user("0")]
    results = [await env.step(assistant(a)) for a in ROUTE]
    assert [r.observation for r in results] == [
        [user(s)] for s in ("4", "8", "9", "10", "14", "15")
    ]
    assert [r.reward for r in results] == [0.0] * 5 + [1.0]
    assert [r.terminated for r in results] == [False] * 5 + [True]
    assert not any(r.truncated for r in results)
    assert results[-1].info["gym_steps"] == 6 and results[-1].info["action"] == 2
    assert type(results[-1].reward) is float and type(results[-1].terminated) is bool
    with pytest.raises(RuntimeError, match="after the episode ended"):
        await env.step(assistant("down"))


@pytest.mark.anyio
async def test_a_hole_terminates_with_reward_0():
    env = lake()
    await start(env)
    assert (await env.step(assistant("right"))).terminated is False  # 0 -> 1
    result = await env.step(assistant("down"))  # 1 -> 5, a hole
    assert (result.reward, result.terminated, result.truncated) == (0.0, True, False)


@pytest.mark.anyio
async def test_invalid_action_is_penalized_explained_and_does_not_move():
    env = lake(invalid_action_reward=-0.5)
    await start(env)
    await env.step(assistant("down"))  # 0 -> 4
    result = await env.step(assistant("jump!"))
    assert result.observation == [user(DiscreteCodec(ACTIONS).error_text)]
    assert (result.reward, result.terminated, result.truncated) == (-0.5, False, False)
    assert result.info["invalid_action"] is True
    assert (result.info["invalid_actions"], result.info["gym_steps"]) == (1, 1)
    assert position(env) == 4  # the gym env was not stepped
    result = await env.step(assistant("down"))  # 4 -> 8, from where it was
    assert result.observation == [user("8")]
    assert result.info["invalid_action"] is False and result.info["invalid_actions"] == 1


@pytest.mark.anyio
async def test_max_invalid_actions_in_a_row_terminates():
    env = lake(max_invalid_actions=2)
    await start(env)
    assert (await env.step(assistant("?"))).terminated is False
    assert (await env.step(assistant("down"))).info["invalid_streak"] == 0  # a valid one resets
    assert (await env.step(assistant("?"))).terminated is False
    result = await env.step(assistant("?"))
    assert (result.terminated, result.truncated) == (True, False)
    assert result.info["invalid_action_limit"] is True and result.info["invalid_actions"] == 3


@pytest.mark.anyio
async def test_gym_time_limit_comes_out_as_truncated_not_terminated():
    env = lake(make_kwargs={"max_episode_steps": 2})
    await start(env)
    first = await env.step(assistant("left"))  # walking into the wall: stays at 0
    second = await env.step(assistant("left"))
    assert (first.terminated, first.truncated) == (False, False)
    assert (second.terminated, second.truncated) == (False, True)
    assert second.observation == [user("0")]  # the state to bootstrap from
    with pytest.raises(RuntimeError, match="after the episode ended"):
        await env.step(assistant("left"))


@pytest.mark.anyio
async def test_invalid_actions_do_not_advance_the_time_limit():
    env = lake(make_kwargs={"max_episode_steps": 1})
    await start(env)
    for _ in range(3):
        assert not (await env.step(assistant("?"))).truncated
    assert (await env.step(assistant("left"))).truncated


@pytest.mark.anyio
async def test_clones_are_independent_and_make_their_own_gym_env():
    template = lake()
    await start(template)
    await template.step(assistant("down"))
    a, b = template.clone(), template.clone()
    assert a.gym_env is None and a.codec is template.codec and a.scenarios is template.scenarios
    await start(a)
    await start(b)
    assert len({id(template.gym_env), id(a.gym_env), id(b.gym_env)}) == 3
    await a.step(assistant("right"))
    await b.step(assistant("down"))
    await b.step(assistant("down"))
    assert (position(template), position(a), position(b)) == (4, 1, 8)
    await a.close()
    assert a.gym_env is None and position(template) == 4


@pytest.mark.anyio
async def test_check_env_passes():
    await check_env(lake(max_invalid_actions=3))
    with pytest.warns(UserWarning, match="did not end an episode within max_steps=8"):
        await check_env(lake())  # the probe "42" is never valid: runs to max_steps
    await check_env(TurnLimit(lake(), max_turns=2))


@pytest.mark.anyio
async def test_rollout_plays_an_episode_end_to_end():
    class RouteAgent:
        async def respond(self, conversation: Sequence[Message]) -> Turn:
            k = sum(m.role == "assistant" for m in conversation)
            return Turn(message=assistant(ROUTE[k]), prompt_ids=[], completion_ids=[])

    trajectory = await run_episode(RouteAgent(), lake(), LAKE, seed=3)
    assert trajectory.error is None
    assert (trajectory.terminated, trajectory.truncated, trajectory.env_return) == (
        True,
        False,
        1.0,
    )
    assert len(trajectory.turns) == 6 and trajectory.info["gym_steps"] == 6


@pytest.mark.anyio
async def test_scenario_env_kwargs_make_another_map():
    env = lake()
    tiny_map = Scenario(id="2x1", prompt=[user("Map: SG")], data={"env_kwargs": {"desc": ["SG"]}})
    assert await start(env, tiny_map) == [system("Reach G."), user("Map: SG"), user("0")]
    result = await env.step(assistant("right"))
    assert (result.reward, result.terminated) == (1.0, True)
    await start(env)  # back to the default map: a new gym env
    assert env.gym_env.unwrapped.desc.shape == (4, 4)


# -- GymEnvironment with a factory ---------------------------------------------------------


@pytest.mark.anyio
async def test_scenario_seed_and_options_win_over_the_episode_seed(recorder):
    env = GymEnvironment(recorder, DiscreteCodec(3), make_kwargs={"size": 1})
    scenario = Scenario(id="s", data={"seed": 7, "options": {"level": 2}, "env_kwargs": {"x": 1}})
    _, info = await env.reset(seed=99, options={"scenario": scenario})
    assert info["seed"] == 7
    await env.reset(seed=99, options={"scenario": Scenario(id="plain")})
    assert [r.resets for r in recorder.made] == [[(7, {"level": 2})], [(99, None)]]
    assert [r.kwargs for r in recorder.made] == [{"size": 1, "x": 1}, {"size": 1}]
    assert recorder.made[0].closed and not recorder.made[1].closed  # kwargs changed: remade
    assert env.clone().gym_env is None  # and Recorder.__deepcopy__ was not called
    await env.close()
    assert recorder.made[1].closed


@pytest.mark.anyio
async def test_seeded_scenarios_and_default_scenario(recorder):
    scenarios = seeded_scenarios([3, 4], options={"a": 1})
    assert [(s.id, s.data) for s in scenarios] == [
        ("seed-3", {"seed": 3, "options": {"a": 1}}),
        ("seed-4", {"seed": 4, "options": {"a": 1}}),
    ]
    assert [s.id for s in GymEnvironment(recorder, DiscreteCodec(3)).scenarios] == ["default"]
    assert [s.id for s in lake(scenarios=None).scenarios] == ["FrozenLake-v1"]


@pytest.mark.anyio
async def test_threaded_runs_the_gym_env_in_a_worker_thread(recorder):
    env = GymEnvironment(recorder, DiscreteCodec(3), threaded=True)
    await env.reset(options={"scenario": env.scenarios[0]})
    result = await env.step(assistant("2"))
    assert (result.reward, result.terminated) == (2.0, True)
    assert threading.get_ident() not in recorder.made[0].threads


@pytest.mark.anyio
async def test_errors_are_clear(recorder):
    with pytest.raises(TypeError, match="not an instance"):
        GymEnvironment(gymnasium.make("FrozenLake-v1"), DiscreteCodec(ACTIONS))
    with pytest.raises(TypeError, match="parse_action"):
        GymEnvironment("FrozenLake-v1", object())
    with pytest.raises(ValueError, match="max_invalid_actions"):
        lake(max_invalid_actions=0)
    with pytest.raises(ValueError, match="invalid_action_reward"):
        lake(invalid_action_reward=float("nan"))
    with pytest.raises(RuntimeError, match="before reset"):
        await lake().step(assistant("down"))
    too_many = GymEnvironment(recorder, DiscreteCodec(5))  # Discrete(3) has no action 4
    await too_many.reset(options={"scenario": too_many.scenarios[0]})
    with pytest.raises(ValueError, match="not in the action space"):
        await too_many.step(assistant("4"))
    with pytest.raises(ValueError, match="must be an int"):
        await too_many.reset(options={"scenario": Scenario(id="s", data={"seed": "7"})})
    with pytest.raises(ValueError, match="must be a dict"):
        await too_many.reset(options={"scenario": Scenario(id="s", data={"options": [1]})})


# -- TextGymEnv ------------------------------------------------------------------------------


def test_text_gym_env_round_trips_through_the_gymnasium_api():
    gym_env = TextGymEnv(lake())
    assert isinstance(gym_env.action_space, spaces.Text)
    observation, info = gym_env.reset(seed=0)
    assert observation == "Reach G.\n0" and observation in gym_env.observation_space
    assert info["scenario_id"] == "4x4" and info["messages"] == [system("Reach G."), user("0")]
    steps = [gym_env.step(action) for action in ROUTE]
    assert [s[0] for s in steps] == ["4", "8", "9", "10", "14", "15"]
    assert steps[-1][1:4] == (1.0, True, False)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        gym_env.step("down")
    gym_env.close()


def test_text_gym_env_closes_the_previous_episode_and_its_loop(recorder):
    gym_env = TextGymEnv(GymEnvironment(recorder, DiscreteCodec(3)))
    gym_env.reset(seed=1)
    gym_env.reset(seed=1)
    assert [r.closed for r in recorder.made] == [True, False]
    # Same seed, same episode seed for the turnrl env (drawn from np_random).
    assert recorder.made[0].resets == recorder.made[1].resets
    gym_env.close()
    assert recorder.made[1].closed and gym_env._loop is None


def test_text_gym_env_passes_gymnasiums_env_checker():
    # Text spaces are supported by gymnasium's checker; the render check is skipped
    # because the adapter declares no render modes.
    gym_env = TextGymEnv(lake(make_kwargs={"max_episode_steps": 5}))
    gym_check_env(gym_env, skip_render_check=True)
    gym_env.close()


@pytest.mark.anyio
async def test_text_gym_env_refuses_to_run_inside_an_event_loop():
    gym_env = TextGymEnv(lake())
    with pytest.raises(RuntimeError, match="inside a running event loop"):
        gym_env.reset(seed=0)
