"""A turnrl Environment behind the synchronous ``gymnasium.Env`` API.

:class:`TextGymEnv` is the reverse of :class:`turnrl.environments.from_gym.GymEnvironment`:
it exposes any turnrl Environment to tools that expect a Gymnasium env, with
``gymnasium.spaces.Text`` actions and observations.

Choices, and why:

* **It owns an event loop.** ``reset``/``step`` are synchronous; they run the
  environment's coroutines on one private loop kept for the adapter's life (so
  loop-bound objects made in ``reset`` still work in ``step``). They cannot run
  inside a running event loop and raise a clear error there.
* **Spaces are ``Text`` over a declared charset** (printable ASCII by default):
  text outside it is still returned, but is not ``in`` the space.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import gymnasium
from gymnasium import spaces

from turnrl.environments.base import Environment
from turnrl.types import Message, Scenario

_T = TypeVar("_T")


def join_contents(messages: Sequence[Message]) -> str:
    """The messages' contents, one per line: the default text observation of TextGymEnv."""
    return "\n".join(m.content for m in messages)


class TextGymEnv(gymnasium.Env[str, str]):
    """A turnrl Environment behind the synchronous ``gymnasium.Env`` API.

    An action is the assistant's reply (a string); an observation is the text
    of the environment's new messages (``format_messages``), and
    ``info["messages"]`` holds the messages themselves. Each ``reset`` plays a
    new ``clone()`` of ``env``, closing the previous episode's.

    ``reset(seed=...)`` seeds ``self.np_random``, which picks the scenario
    (unless ``options={"scenario": Scenario(...)}``) and the episode's seed
    for the turnrl environment, so seeded resets are reproducible.

    ``reset``/``step``/``close`` run the environment's coroutines on this
    adapter's own event loop: they must not be called from inside a running
    event loop (an ``async def``, a Jupyter cell); there, await the turnrl
    environment directly, or call the adapter from a worker thread. No render
    modes are declared (``metadata`` is ``gymnasium.Env``'s default).

    Args:
        env: The turnrl environment (a template, cloned per episode).
        scenarios: Scenarios to draw from; default ``env.scenarios``.
        max_length: Longest text in the spaces.
        charset: Characters of the ``Text`` spaces (printable ASCII by
            default; text with other characters is not ``in`` the space).
        format_messages: Messages to observation text.

    Raises:
        TypeError: ``env`` is not a turnrl Environment.
        ValueError: No scenarios.
    """

    def __init__(
        self,
        env: Environment,
        scenarios: Sequence[Scenario] | None = None,
        *,
        max_length: int = 8192,
        charset: str | frozenset[str] = string.printable,
        format_messages: Callable[[Sequence[Message]], str] = join_contents,
    ) -> None:
        if not isinstance(env, Environment):
            raise TypeError(f"TextGymEnv wraps a turnrl Environment, got {type(env).__name__}")
        self.turnrl_env = env
        self.scenarios = tuple(scenarios if scenarios is not None else env.scenarios)
        if not self.scenarios:
            raise ValueError(
                "TextGymEnv needs scenarios: pass scenarios=[...] or set env.scenarios"
            )
        self.format_messages = format_messages
        self.observation_space = spaces.Text(max_length, min_length=0, charset=charset)
        self.action_space = spaces.Text(max_length, min_length=0, charset=charset)
        self._episode: Environment | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no running loop: the supported case
        else:
            coro.close()
            raise RuntimeError(
                "TextGymEnv.reset/step/close are synchronous and cannot run inside a running "
                "event loop; in async code await the turnrl Environment directly, or call "
                "them from a worker thread (await anyio.to_thread.run_sync(env.step, action))"
            )
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        scenario = options.pop("scenario", None)
        if scenario is None:
            scenario = self.scenarios[int(self.np_random.integers(len(self.scenarios)))]
        episode_seed = int(self.np_random.integers(2**31))
        self._run(self._close_episode())
        self._episode = self.turnrl_env.clone()
        observation, info = self._run(
            self._episode.reset(seed=episode_seed, options={**options, "scenario": scenario})
        )
        info = {**info, "messages": list(observation), "scenario_id": scenario.id}
        return self.format_messages(observation), info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._episode is None:
            raise RuntimeError("TextGymEnv.step() called before reset()")
        message = Message(role="assistant", content=str(action))
        observation, reward, terminated, truncated, info = self._run(self._episode.step(message))
        info = {**info, "messages": list(observation)}
        text = self.format_messages(observation)
        return text, float(reward), bool(terminated), bool(truncated), info

    async def _close_episode(self) -> None:
        episode, self._episode = self._episode, None
        if episode is not None:
            await episode.close()

    def close(self) -> None:
        """Close the current episode's environment and the event loop."""
        if self._loop is None:
            return
        self._run(self._close_episode())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()
        self._loop = None
