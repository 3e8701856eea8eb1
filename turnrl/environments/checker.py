"""check_env: the Environment contract, checked before training starts.

Like Gymnasium's ``check_env``, it plays short episodes and reports the first
broken rule with :class:`EnvContractError`, whose message names the part of
the contract (``reset``, ``step`` observation, ``reward``, ``clone``, ...) and
how to fix it. A mistake found here costs a second; found by the trainer it
costs a crashed run or, worse, a silently wrong one (a ``numpy.bool_`` flag or
a tensor reward is accepted by most code and breaks batching later).

What it checks:

1. ``env`` is an :class:`~turnrl.environments.base.Environment`; ``reset``,
   ``step``, ``agent_view`` and ``close`` are coroutine functions;
   ``scenarios`` holds ``Scenario`` objects.
2. ``reset(seed=0, options={"scenario": scenario})`` returns
   ``(list[Message], dict)``, and ``agent_view`` of it a non-empty
   ``list[Message]``.
3. ``step(Message(role="assistant", content="42"))`` returns a ``StepResult``
   (or a 5-tuple): observation a list of non-assistant ``Message``, reward a
   finite real number, ``terminated``/``truncated`` real ``bool``, info a dict.
   It steps until the episode ends or ``max_steps``.
4. ``clone()`` returns a different object of the same type; a full episode on
   the clone passes the checks above; and, if the environment is
   deterministic under the seed, running the clone mid-episode leaves the
   original's episode unchanged (shared mutable state shows up here).
5. The episode ends (``terminated`` or ``truncated``) within ``max_steps``. One
   that does not is not a broken contract (it may end later, or on another
   answer), but an episode that nothing ends runs until the model's context
   is full, so a warning says so and how to end it.

It returns an :class:`EnvCheckReport` of how the episode went, which prints
as one line.

Exceptions raised by the environment itself propagate unchanged, except
inside the clone-independence check, where they point at shared state.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

import structlog

from turnrl.environments.base import EnvContractError, Environment, checked_agent_view
from turnrl.types import Message, Scenario

log = structlog.get_logger(__name__)

PROBE = Message(role="assistant", content="42")

# One step's comparable outcome: observation, reward, terminated, truncated.
_Record = tuple[tuple[Message, ...], float, bool, bool]


def _typename(value: Any) -> str:
    # Qualified for non-builtins: numpy 2 names its bool scalar plain "bool".
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _fail(part: str, problem: str, fix: str) -> EnvContractError:
    return EnvContractError(f"{part}: {problem}. Fix: {fix}.")


def _check_messages(part: str, observation: Any, *, allow_assistant: bool) -> list[Message]:
    if not isinstance(observation, list):
        raise _fail(
            part,
            f"observation must be a list of Message, got {_typename(observation)}",
            "return a list of turnrl.types.Message (an empty list is fine)",
        )
    for i, m in enumerate(observation):
        if not isinstance(m, Message):
            raise _fail(
                part,
                f"observation[{i}] must be a Message, got {_typename(m)}",
                "wrap text as Message(role='user', content=text)",
            )
        if m.role == "assistant" and not allow_assistant:
            raise _fail(
                part,
                f"observation[{i}] has role 'assistant'",
                "the environment answers with user, tool or system messages; "
                "the assistant's messages come from the agent",
            )
    return observation


def _check_structure(env: Environment) -> None:
    if not isinstance(env, Environment):
        raise _fail(
            "env",
            f"expected a turnrl Environment, got {type(env).__name__}",
            "subclass turnrl.environments.Environment and implement async reset/step",
        )
    for name in ("reset", "step", "agent_view", "close"):
        if not inspect.iscoroutinefunction(getattr(env, name)):
            raise _fail(
                name,
                f"{type(env).__name__}.{name} is not a coroutine function",
                f"define it as `async def {name}(...)`; run blocking work with "
                "anyio.to_thread.run_sync",
            )
    scenarios = env.scenarios
    if isinstance(scenarios, (str, bytes)) or not all(isinstance(s, Scenario) for s in scenarios):
        raise _fail(
            "scenarios",
            "env.scenarios must be a sequence of Scenario",
            "set self.scenarios = [Scenario(id=..., prompt=[...]), ...] (or leave it empty)",
        )


async def _check_reset(env: Environment, options: dict[str, Any] | None) -> list[Message]:
    out = await env.reset(seed=0, options=options)
    if not isinstance(out, tuple) or len(out) != 2:
        raise _fail(
            "reset",
            f"must return (observation, info), got {_typename(out)}",
            "return a 2-tuple: (list of opening Messages, info dict)",
        )
    observation, info = out
    _check_messages("reset observation", observation, allow_assistant=True)
    if not isinstance(info, dict):
        raise _fail("reset info", f"must be a dict, got {_typename(info)}", "return {} if no info")
    return observation


async def _check_step(env: Environment) -> _Record:
    out = await env.step(PROBE)
    if not isinstance(out, tuple) or len(out) != 5:
        raise _fail(
            "step",
            "must return StepResult(observation, reward, terminated, truncated, info), "
            f"got {_typename(out)}{f' of length {len(out)}' if isinstance(out, tuple) else ''}",
            "return turnrl.environments.StepResult(...)",
        )
    observation, reward, terminated, truncated, info = out
    _check_messages("step observation", observation, allow_assistant=False)
    if isinstance(reward, bool) or not isinstance(reward, Real):
        raise _fail(
            "step reward",
            f"must be a real number, got {_typename(reward)}",
            "return a float (use float(x) for bools, x.item() for tensors)",
        )
    if not math.isfinite(reward):
        raise _fail("step reward", f"must be finite, got {reward!r}", "never return NaN or inf")
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(flag, bool):
            raise _fail(
                f"step {name}",
                f"must be a bool, got {_typename(flag)}",
                f"convert with bool(...); {name} is kept separate all the way to the estimator",
            )
    if not isinstance(info, dict):
        raise _fail("step info", f"must be a dict, got {_typename(info)}", "return {} if no info")
    return tuple(observation), float(reward), terminated, truncated


async def _episode(env: Environment, options: dict[str, Any] | None, steps: int) -> list[_Record]:
    """Reset, then step until the episode ends or ``steps`` steps were taken."""
    observation = await _check_reset(env, options)
    await checked_agent_view(env, observation)  # what the agent would be prompted with
    return [(tuple(observation), 0.0, False, False), *await _steps(env, steps)]


async def _steps(env: Environment, steps: int) -> list[_Record]:
    records: list[_Record] = []
    for _ in range(steps):
        records.append(await _check_step(env))
        if _ended(records[-1]):
            break
    return records


def _ended(record: _Record) -> bool:
    return record[2] or record[3]


def _check_clone_type(env: Environment) -> Environment:
    clone = env.clone()
    if clone is env:
        raise _fail(
            "clone",
            "clone() returned the environment itself",
            "return a new instance (the default, copy.deepcopy(self), does)",
        )
    if type(clone) is not type(env):
        raise _fail(
            "clone",
            f"clone() returned {type(clone).__name__}, expected {type(env).__name__}",
            "return an instance of the same class",
        )
    return clone


async def _check_independence(
    env: Environment, options: dict[str, Any] | None, max_steps: int, reference: list[_Record]
) -> None:
    """A clone playing a whole episode while the original is mid-episode changes nothing.

    Only called for environments that replay ``reference`` exactly under
    ``seed=0`` (so any difference comes from shared state, not chance).
    """
    head = await _episode(env, options, 1)
    other = _check_clone_type(env)
    await _episode(other, options, max_steps)
    await other.close()
    try:
        tail = [] if _ended(head[-1]) else await _steps(env, max_steps - 1)
    except EnvContractError:
        raise
    except Exception as e:
        raise _fail(
            "clone",
            f"after a clone played an episode, the original's step() raised {e!r}",
            "the clone shares mutable state with the original; copy it in clone()",
        ) from e
    if head + tail != reference:
        raise _fail(
            "clone",
            "a clone's reset/step changed the original's episode",
            "the clone shares mutable state with the original; copy it in clone()",
        )


@dataclass(frozen=True)
class EnvCheckReport:
    """What :func:`check_env` saw; ``str(report)`` is one line for a terminal.

    Attributes:
        env: The environment's class name.
        steps: Steps of the probe episode (the agent answers ``"42"`` every turn).
        ended: ``"terminated"`` or ``"truncated"`` (``terminated`` when both are
            set), or None when the episode had not ended after ``max_steps``.
        replayed: A clone replayed the episode exactly under ``seed=0``, so the
            check that clones share no state ran (False: the environment is
            random under a fixed seed, and that check was skipped).
    """

    env: str
    steps: int
    ended: Literal["terminated", "truncated"] | None
    replayed: bool

    def __str__(self) -> str:
        answer = f"the probe episode (the answer {PROBE.content!r} every turn)"
        how = (
            f"ended {self.ended} after {self.steps} steps"
            if self.ended
            else f"had not ended after {self.steps} steps"
        )
        clone = (
            "a clone replayed it without changing the original"
            if self.replayed
            else "a clone played it differently (random under seed 0), so clone "
            "independence was not compared"
        )
        return f"check_env: {self.env} follows the contract; {answer} {how}; {clone}"


def _never_ends(name: str, max_steps: int) -> str:
    return (
        f"check_env: {name} did not end an episode within max_steps={max_steps} steps of the "
        f"same answer ({PROBE.content!r}), and an episode that nothing ends runs until the "
        "model's context is full. End it in step(): terminated=True when the task's own rules "
        "end it (the last allowed guess, a give-up), or truncate it at a limit that is not "
        "part of the task with TurnLimit(env, max_turns) or the trainer's rollout.max_turns. "
        "If it ends later, check with a larger max_steps"
    )


async def check_env(
    env: Environment, scenario: Scenario | None = None, *, max_steps: int = 8
) -> EnvCheckReport:
    """Check that ``env`` follows the turnrl Environment contract.

    Args:
        env: The environment (a template: it is reset and stepped).
        scenario: Scenario to play; default ``env.scenarios[0]`` if any, else
            ``reset`` gets ``options=None``.
        max_steps: Steps per episode at most (the probe answer is ``"42"``,
            which may never end an episode).

    Returns:
        How the probe episode went. An episode that has not ended after
        ``max_steps`` also raises a ``UserWarning`` saying how to end it.

    Raises:
        EnvContractError: The first broken rule, named, with how to fix it.
        ValueError: ``max_steps`` < 1.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    _check_structure(env)
    if scenario is None and env.scenarios:
        scenario = env.scenarios[0]
    options = None if scenario is None else {"scenario": scenario}

    reference = await _episode(env, options, max_steps)
    clone = _check_clone_type(env)
    replayed = await _episode(clone, options, max_steps) == reference
    if replayed:
        await _check_independence(env, options, max_steps, reference)
    await clone.close()
    last = reference[-1]
    ended = "terminated" if last[2] else "truncated" if last[3] else None
    report = EnvCheckReport(type(env).__name__, len(reference) - 1, ended, replayed)
    if ended is None:
        warnings.warn(_never_ends(report.env, max_steps), UserWarning, stacklevel=1)
    log.info("check_env_passed", env=report.env, steps=report.steps, ended=ended, replayed=replayed)
    return report
