"""Gymnasium adapters: a ``gymnasium.Env`` as a turnrl Environment, and back.

:class:`GymEnvironment` lets a language model play any Gymnasium environment
through text. A :class:`TextCodec` turns each gym observation into a user
message and each assistant reply into a gym action; :class:`DiscreteCodec`
does it for ``Discrete`` spaces (FrozenLake, Taxi, CliffWalking, ...)::

    codec = DiscreteCodec(["left", "down", "right", "up"], instructions="Reach G.")
    env = GymEnvironment("FrozenLake-v1", codec, make_kwargs={"is_slippery": False})

:class:`~turnrl.environments.to_gym.TextGymEnv` (in ``to_gym.py``) goes the
other way: it exposes a turnrl Environment through the synchronous
``gymnasium.Env`` API, with text actions and observations, for tools that
expect one.

Choices, and why:

* **A factory, not an instance.** The rollout plays every episode on its own
  ``clone()``; a gym env may hold a simulator, a window or a process that must
  not be deep-copied. ``GymEnvironment`` therefore takes an env id (for
  ``gymnasium.make``) or a factory, and each clone makes its own gym env at
  ``reset``. Passing an instance is refused with an error saying so.
* **Scenarios carry the gym seed.** ``scenario.data`` may hold ``"seed"`` and
  ``"options"`` for ``gym_env.reset`` and ``"env_kwargs"`` for the factory (a
  FrozenLake ``desc``, say). A scenario's seed wins over the per-episode seed
  the rollout passes, so the G episodes of a group play the same instance,
  which is what group-relative estimators compare. For stochastic dynamics
  they then also share the random stream (common random numbers): episodes
  differ only by the agent's actions. Without a scenario seed each episode
  uses the rollout's seed (different within a group).
* **Invalid replies do not step the gym env.** A reply the codec cannot parse
  earns ``invalid_action_reward`` and a user message listing the valid actions,
  and the gym state stays put. It does not advance gym's ``TimeLimit`` either,
  so bound such streaks with ``max_invalid_actions`` (which *terminates*: ending
  a game by forfeit is a rule of the text task, and bootstrapping from the gym
  state would credit an agent that cannot act with that state's value) or a
  :class:`~turnrl.environments.wrappers.TurnLimit` (which truncates).
* **Rewards and flags pass through.** Gym rewards become per-turn rewards;
  ``terminated`` and ``truncated`` are returned unchanged, so gym's own
  ``TimeLimit`` comes out as ``truncated``. Every step (the last included)
  returns the new state as a user message, the state GAE bootstraps from.
* **Blocking calls.** Toy environments step in microseconds, so by default the
  gym env runs on the event loop; ``threaded=True`` moves ``make``, ``reset``,
  ``step`` and ``close`` to a worker thread for slow simulators.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import anyio
import gymnasium
import numpy as np

from turnrl.environments.base import Environment, StepResult, scenario_from_options
from turnrl.types import Message, Scenario, system, user

_T = TypeVar("_T")


class ActionParseError(ValueError):
    """A reply is not a valid action. The message is shown to the agent as is."""


@runtime_checkable
class TextCodec(Protocol):
    """Converts between gym observations/actions and text.

    A codec is shared by every clone of a :class:`GymEnvironment` (one per
    concurrent episode), so it keeps no per-episode state.
    """

    def instructions(self) -> str | None:
        """Text shown once as a system message at reset (the rules, the actions), or None."""
        ...

    def observation_text(self, observation: Any, info: dict[str, Any]) -> str:
        """The user message for a gym observation (``info`` is gym's info dict)."""
        ...

    def parse_action(self, text: str) -> Any:
        """The gym action in an assistant reply.

        Raises:
            ActionParseError: No valid action in ``text``; the message tells
                the agent what a valid reply looks like.
        """
        ...


class DiscreteCodec:
    """A codec for a ``Discrete`` action space with named actions, and ``Discrete`` observations.

    A reply names an action or gives its index (``"Down"``, ``"down."``,
    ``"1"``), case-insensitively; the first whole word that matches wins, so
    ``"go left, then up"`` is ``left``. The action is ``start + index``.

    Args:
        actions: Action names in index order (``["left", "down", "right",
            "up"]`` for FrozenLake), or the number of unnamed actions.
        start: The ``start`` of the ``Discrete`` action space.
        render: Observation to text; default ``str``. numpy integers are
            converted to ``int`` first.
        instructions: System text shown at reset, or None.
        accept_index: Also accept the index ``0 .. n-1`` of an action.

    Raises:
        ValueError: No actions, an empty or duplicated name (ignoring case),
            unnamed actions with ``accept_index=False``, or a name made of
            digits with ``accept_index=True``.

    >>> codec = DiscreteCodec(["left", "down", "right", "up"])
    >>> codec.parse_action("Down!"), codec.parse_action("3"), codec.parse_action("go left, up")
    (1, 3, 0)
    """

    def __init__(
        self,
        actions: Sequence[str] | int,
        *,
        start: int = 0,
        render: Callable[[Any], str] = str,
        instructions: str | None = None,
        accept_index: bool = True,
    ) -> None:
        names = [] if isinstance(actions, int) else [str(a).strip() for a in actions]
        n = actions if isinstance(actions, int) else len(names)
        folded = [name.casefold() for name in names]
        if n < 1 or "" in folded or len(set(folded)) != len(folded):
            raise ValueError(f"actions must be >= 1 distinct non-empty names, got {actions!r}")
        if not names and not accept_index:
            raise ValueError("unnamed actions can only be given by index: keep accept_index=True")
        if accept_index and any(name.isdecimal() for name in names):
            raise ValueError(f"names {names} look like indices: pass accept_index=False")
        self.names, self.n, self.start = tuple(names), n, start
        self.render, self.accept_index, self._instructions = render, accept_index, instructions
        self._index = {name: i for i, name in enumerate(folded)}
        if accept_index:
            self._index |= {str(i): i for i in range(n)}
        words = sorted(self._index, key=len, reverse=True)  # "move up" is tried before "move"
        alternatives = "|".join(re.escape(w) for w in words)
        # Whole words only: "3" in "x3" or "-3" and "up" in "upon" are not actions.
        self._pattern = re.compile(rf"(?<![\w-])(?:{alternatives})(?!\w)", re.IGNORECASE)
        valid = ", ".join(self.names)
        if accept_index:
            valid = f"{valid} (or 0-{n - 1})" if names else f"0-{n - 1}"
        self.error_text = f"Invalid action. Reply with one of: {valid}."

    def instructions(self) -> str | None:
        return self._instructions

    def observation_text(self, observation: Any, info: dict[str, Any]) -> str:
        if isinstance(observation, np.integer):
            observation = int(observation)
        return self.render(observation)

    def parse_action(self, text: str) -> int:
        match = self._pattern.search(text)
        if match is None:
            raise ActionParseError(self.error_text)
        return self.start + self._index[match.group().casefold()]

    def __repr__(self) -> str:
        return f"DiscreteCodec({list(self.names) or self.n!r}, start={self.start})"


def seeded_scenarios(seeds: Iterable[int], *, prefix: str = "seed", **data: Any) -> list[Scenario]:
    """One scenario per gym seed, with ids ``f"{prefix}-{seed}"``.

    Args:
        seeds: Seeds for ``gym_env.reset``.
        prefix: Id prefix.
        **data: More ``scenario.data`` for every scenario (``options``,
            ``env_kwargs``).

    >>> [s.id for s in seeded_scenarios(range(2))], seeded_scenarios([7])[0].data
    (['seed-0', 'seed-1'], {'seed': 7})
    """
    return [Scenario(id=f"{prefix}-{s}", data={"seed": int(s), **data}) for s in seeds]


def _dict_field(scenario: Scenario, key: str) -> dict[str, Any]:
    value = scenario.data.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(
            f"scenario {scenario.id!r}: data[{key!r}] must be a dict, got {type(value).__name__}"
        )
    return dict(value)


class GymEnvironment(Environment):
    """A ``gymnasium.Env`` played through text, one gym env per episode.

    ``reset`` shows the codec's instructions (a system message), then
    ``scenario.prompt``, then the first observation as a user message. Each
    ``step`` parses the assistant's reply into an action and steps the gym
    env; see the module docstring for invalid replies, seeds and flags.

    Args:
        make_env: A Gymnasium env id for ``gymnasium.make``, or a factory
            returning a new ``gymnasium.Env``. Called with ``make_kwargs``
            updated by the scenario's ``data["env_kwargs"]``.
        codec: Converts observations and actions (shared by clones).
        scenarios: Scenarios for the trainer; default one scenario with no
            data (gym's own reset distribution, seeded per episode).
        make_kwargs: Keyword arguments for every ``make_env`` call, e.g.
            ``{"is_slippery": False, "max_episode_steps": 20}``.
        invalid_action_reward: Reward for a reply that is no valid action.
        max_invalid_actions: Terminate after this many invalid replies in a
            row; None: no limit.
        threaded: Run the gym env's blocking calls in a worker thread.

    Raises:
        TypeError: ``make_env`` is a gym env instance or not callable, or
            ``codec`` is no :class:`TextCodec`.
        ValueError: A non-finite ``invalid_action_reward``, or
            ``max_invalid_actions`` < 1.
    """

    def __init__(
        self,
        make_env: str | Callable[..., gymnasium.Env],
        codec: TextCodec,
        scenarios: Sequence[Scenario] | None = None,
        *,
        make_kwargs: Mapping[str, Any] | None = None,
        invalid_action_reward: float = -0.1,
        max_invalid_actions: int | None = None,
        threaded: bool = False,
    ) -> None:
        if isinstance(make_env, gymnasium.Env) or not (
            isinstance(make_env, str) or callable(make_env)
        ):
            raise TypeError(
                f"make_env must be an env id or a factory, got {type(make_env).__name__}: each "
                "episode needs its own gym env, so pass e.g. `lambda: MyEnv(...)`, not an instance"
            )
        if not isinstance(codec, TextCodec):
            raise TypeError(
                f"codec must have instructions(), observation_text() and parse_action(); got "
                f"{type(codec).__name__}"
            )
        if not math.isfinite(invalid_action_reward):
            raise ValueError(f"invalid_action_reward must be finite, got {invalid_action_reward!r}")
        if max_invalid_actions is not None and (
            isinstance(max_invalid_actions, bool)
            or not isinstance(max_invalid_actions, int)
            or max_invalid_actions < 1
        ):
            raise ValueError(
                f"max_invalid_actions must be None or an integer >= 1, got {max_invalid_actions!r}"
            )
        self.make_env = make_env
        self.codec = codec
        default_id = make_env if isinstance(make_env, str) else "default"
        self.scenarios = tuple(scenarios) if scenarios is not None else (Scenario(id=default_id),)
        self.make_kwargs = dict(make_kwargs or {})
        self.invalid_action_reward = float(invalid_action_reward)
        self.max_invalid_actions = max_invalid_actions
        self.threaded = threaded
        self._gym: gymnasium.Env | None = None
        self._gym_kwargs: dict[str, Any] | None = None
        self._clear_episode()

    def _clear_episode(self) -> None:
        self._started = False
        self._done = False
        self._invalid_streak = 0
        self._invalid_total = 0
        self._gym_steps = 0

    @property
    def gym_env(self) -> gymnasium.Env | None:
        """The gym env of the current episode (None before the first reset)."""
        return self._gym

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        if self.threaded:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        return fn(*args, **kwargs)

    def _make(self, kwargs: dict[str, Any]) -> gymnasium.Env:
        if isinstance(self.make_env, str):
            return gymnasium.make(self.make_env, **kwargs)
        env = self.make_env(**kwargs)
        if not isinstance(env, gymnasium.Env):
            raise TypeError(f"make_env returned {type(env).__name__}, not a gymnasium.Env")
        return env

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        scenario = scenario_from_options(options)
        kwargs = {**self.make_kwargs, **_dict_field(scenario, "env_kwargs")}
        gym_options = _dict_field(scenario, "options") or None
        seed = scenario.data.get("seed", seed)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"scenario {scenario.id!r}: data['seed'] must be an int, got {seed!r}")
        if self._gym is None or kwargs != self._gym_kwargs:  # reuse it when nothing changed
            await self.close()
            self._gym = await self._call(self._make, kwargs)
            self._gym_kwargs = kwargs
        observation, gym_info = await self._call(self._gym.reset, seed=seed, options=gym_options)
        self._clear_episode()
        self._started = True
        opening = [system(text)] if (text := self.codec.instructions()) else []
        opening += [*scenario.prompt, user(self.codec.observation_text(observation, gym_info))]
        return opening, {**gym_info, "scenario_id": scenario.id, "seed": seed}

    async def step(self, message: Message) -> StepResult:
        if not self._started or self._gym is None:
            raise RuntimeError("GymEnvironment.step() called before reset()")
        if self._done:
            raise RuntimeError("GymEnvironment.step() called after the episode ended")
        if message.role != "assistant":
            raise ValueError(f"step() takes the assistant's message, got role {message.role!r}")
        try:
            action = self.codec.parse_action(message.content)
        except ActionParseError as e:
            return self._invalid(str(e))
        if not self._gym.action_space.contains(action):
            raise ValueError(
                f"{self.codec!r} parsed {message.content!r} into {action!r}, which is not in the "
                f"action space {self._gym.action_space}: the codec does not match the env"
            )
        observation, reward, terminated, truncated, gym_info = await self._call(
            self._gym.step, action
        )
        self._invalid_streak = 0
        self._gym_steps += 1
        self._done = bool(terminated or truncated)
        info = {**gym_info, "action": action, **self._counts(invalid=False)}
        text = self.codec.observation_text(observation, gym_info)
        return StepResult([user(text)], float(reward), bool(terminated), bool(truncated), info)

    def _invalid(self, explanation: str) -> StepResult:
        self._invalid_streak += 1
        self._invalid_total += 1
        limit = self.max_invalid_actions
        forfeit = limit is not None and self._invalid_streak >= limit
        self._done = forfeit
        info = {**self._counts(invalid=True), "invalid_action_limit": forfeit}
        return StepResult([user(explanation)], self.invalid_action_reward, forfeit, False, info)

    def _counts(self, *, invalid: bool) -> dict[str, Any]:
        return {
            "invalid_action": invalid,
            "invalid_actions": self._invalid_total,
            "invalid_streak": self._invalid_streak,
            "gym_steps": self._gym_steps,
        }

    def clone(self) -> GymEnvironment:
        """A fresh instance sharing the factory, codec and scenarios, with no gym env yet.

        The gym env itself is never copied: the clone makes its own at reset.
        """
        shared = (self.make_env, self.codec, self.scenarios, self._gym)
        memo: dict[int, Any] = {id(obj): obj for obj in shared}
        new = copy.deepcopy(self, memo)
        new._gym = new._gym_kwargs = None
        new._clear_episode()
        return new

    async def close(self) -> None:
        """Close the gym env, if one was made."""
        gym_env, self._gym, self._gym_kwargs = self._gym, None, None
        if gym_env is not None:
            await self._call(gym_env.close)

    def __repr__(self) -> str:
        name = self.make_env if isinstance(self.make_env, str) else type(self.make_env).__name__
        return f"<GymEnvironment {name} {self.codec!r}>"
