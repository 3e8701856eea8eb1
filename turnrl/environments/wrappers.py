"""Environment wrappers: limits and other cross-cutting concerns, one per class.

As in Gymnasium, a limit set from outside the task is a wrapper rather than
environment logic, so every environment gets the same, tested behaviour (a
limit that is one of the task's own rules, a game's last allowed guess, ends
the episode from the environment's ``step`` with ``terminated`` instead):

* :class:`TurnLimit` truncates an episode after ``max_turns`` assistant turns.
* :class:`Timeout` bounds the wall-clock time of each ``reset``/``step``
  (and ``agent_view``, which may call a model to summarise).

Every wrapper forwards ``agent_view``; the context policies of
:mod:`turnrl.environments.context` are wrappers that change it.

Limits *truncate*, they never *terminate*: the task itself did not end, so the
learner may bootstrap from the next state (see ``StepResult``). ``Timeout`` is
the exception that proves the rule: a call that did not finish has no result
to mark, so it raises :class:`EnvTimeoutError` and the rollout records the
episode as failed.

Composition: ``Timeout(TurnLimit(MyEnv(), 8), 30.0)``. ``Wrapper.clone()``
clones the inner environment and copies the wrapper around it, so a wrapped
template works with the rollout's one-clone-per-episode scheme.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import anyio
import structlog

from turnrl.environments.base import Environment, StepResult, checked_step
from turnrl.types import Message, Scenario

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_W = TypeVar("_W", bound="Wrapper")


class Wrapper(Environment):
    """An environment that forwards everything to ``self.env``.

    Subclasses override only what they change. ``clone()`` deep-copies the
    wrapper's own state but gets the inner environment from ``env.clone()``,
    so an inner environment's sharing rules (a shared model, say) are kept.

    Args:
        env: The environment to wrap.
    """

    def __init__(self, env: Environment) -> None:
        if not isinstance(env, Environment):
            raise TypeError(
                f"{type(self).__name__} wraps a turnrl Environment, got {type(env).__name__}"
            )
        self.env = env

    @property
    def scenarios(self) -> Sequence[Scenario]:  # type: ignore[override]
        """The inner environment's scenarios."""
        return self.env.scenarios

    @property
    def tools(self) -> Sequence[Any] | None:
        """The inner environment's tools (``None`` if it offers none)."""
        return getattr(self.env, "tools", None)

    @property
    def unwrapped(self) -> Environment:
        """The innermost environment, under all wrappers."""
        env = self.env
        while isinstance(env, Wrapper):
            env = env.env
        return env

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        return await self.env.reset(seed=seed, options=options)

    async def step(self, message: Message) -> StepResult:
        return await self.env.step(message)

    async def agent_view(self, conversation: list[Message]) -> list[Message]:
        return await self.env.agent_view(conversation)

    def clone(self: _W) -> _W:
        # The memo maps the inner env to its clone, so deepcopy copies the
        # wrapper's own state but uses env.clone() for the inner environment.
        return copy.deepcopy(self, {id(self.env): self.env.clone()})

    async def close(self) -> None:
        await self.env.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}{self.env!r}>"


def check_max_turns(max_turns: int) -> int:
    """Validate a turn limit (shared by TurnLimit and ConversationEnvironment).

    Raises:
        ValueError: ``max_turns`` is not an integer >= 1.
    """
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
        raise ValueError(f"max_turns must be an integer >= 1, got {max_turns!r}")
    return max_turns


def apply_turn_limit(result: StepResult, turns: int, max_turns: int | None) -> StepResult:
    """Truncate ``result`` if ``turns`` steps reached ``max_turns``.

    The one definition of a turn limit, used by :class:`TurnLimit` and by
    environments with a built-in limit. A step that terminated stays
    terminated only: the task ended on its own, so there is nothing to
    bootstrap and the limit played no part.

    Args:
        result: The step's result before the limit.
        turns: Steps taken since ``reset``, including this one.
        max_turns: The limit; ``None`` for no limit.

    Returns:
        ``result``, or a copy with ``truncated=True`` and ``info["turn_limit"]=True``.
    """
    if max_turns is None or turns < max_turns or result.terminated:
        return result
    return result._replace(truncated=True, info={**result.info, "turn_limit": True})


class TurnLimit(Wrapper):
    """Truncate episodes after ``max_turns`` steps (assistant turns).

    Args:
        env: The environment to wrap.
        max_turns: Steps after which the episode is truncated (>= 1).

    Raises:
        ValueError: ``max_turns`` is not an integer >= 1.
    """

    def __init__(self, env: Environment, max_turns: int) -> None:
        super().__init__(env)
        self.max_turns = check_max_turns(max_turns)
        self.elapsed_turns = 0

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        self.elapsed_turns = 0
        return await self.env.reset(seed=seed, options=options)

    async def step(self, message: Message) -> StepResult:
        # Checked first: a plain 5-tuple has no _replace, a bad one deserves its own error.
        result = await checked_step(self.env, message)
        self.elapsed_turns += 1
        return apply_turn_limit(result, self.elapsed_turns, self.max_turns)

    def clone(self) -> TurnLimit:
        new = super().clone()
        new.elapsed_turns = 0
        return new


class EnvTimeoutError(TimeoutError):
    """An environment's ``reset`` or ``step`` did not finish within its time limit."""


class Timeout(Wrapper):
    """Fail a ``reset``, ``step`` or ``agent_view`` that takes longer than ``seconds``.

    The limit is enforced by cancelling the call (``anyio.fail_after``), which
    interrupts it at its next ``await``. A call that blocks the event loop
    (``time.sleep``, synchronous I/O, heavy computation) cannot be interrupted
    by anything in Python: every episode waits with it, and the rollout's
    watchdog (:mod:`turnrl.watchdog`) logs ``event_loop_blocked`` naming it.
    When such a call does return, after the limit, it fails all the same
    (its result is dropped). Move blocking work to a thread with
    ``await anyio.to_thread.run_sync(fn, ...)``.

    Args:
        env: The environment to wrap.
        seconds: Time limit for each ``reset``, ``step`` and ``agent_view`` (> 0).

    Raises:
        ValueError: ``seconds`` is not a positive finite number.
    """

    def __init__(self, env: Environment, seconds: float) -> None:
        super().__init__(env)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"seconds must be a positive finite number, got {seconds!r}")
        self.seconds = float(seconds)

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        return await self._limited("reset", self.env.reset(seed=seed, options=options))

    async def step(self, message: Message) -> StepResult:
        return await self._limited("step", self.env.step(message))

    async def agent_view(self, conversation: list[Message]) -> list[Message]:
        return await self._limited("agent_view", self.env.agent_view(conversation))

    async def _limited(self, method: str, call: Awaitable[_T]) -> _T:
        name = type(self.env).__name__
        started = anyio.current_time()
        try:
            with anyio.fail_after(self.seconds) as scope:
                result = await call
        except TimeoutError as e:
            # Only our own deadline becomes EnvTimeoutError; a TimeoutError
            # raised by the environment itself passes through unchanged.
            if not scope.cancelled_caught:
                raise
            log.warning("env_timeout", env=name, method=method, seconds=self.seconds)
            raise EnvTimeoutError(
                f"{name}.{method}() did not finish within {self.seconds:g} s (Timeout wrapper)"
            ) from e
        elapsed = anyio.current_time() - started
        if elapsed > self.seconds:  # it blocked the event loop, so the deadline could not fire
            log.warning("env_timeout", env=name, method=method, seconds=self.seconds, blocked=True)
            raise EnvTimeoutError(
                f"{name}.{method}() took {elapsed:.1f} s, more than its {self.seconds:g} s limit, "
                "blocking the event loop (no await) so it could not be cancelled; make the "
                "blocking call async or run it with `await anyio.to_thread.run_sync(fn, ...)`"
            )
        return result
