"""The Environment contract: who answers the agent.

An environment is Gymnasium-shaped but asynchronous, because environments in
turnrl talk to simulated users, tools and judges that are themselves slow and
concurrent (a simulated user may be another language model sharing the
generation engine). The rollout runs many episodes at once on one event loop,
so ``reset`` and ``step`` are coroutines and must never block it.

One episode, as the rollout drives it::

    env = template.clone()                      # one instance per episode
    observation, info = await env.reset(seed=seed, options={"scenario": scenario})
    while True:
        turn = await agent.respond(await env.agent_view(conversation))
        observation, reward, terminated, truncated, info = await env.step(turn.message)
        if terminated or truncated:
            break
    await env.close()

Choices, and why:

* ``StepResult`` is a NamedTuple so it unpacks like Gymnasium's 5-tuple while
  still having named fields for readable code (``result.truncated``).
* An observation is the list of *new* messages to append to the conversation
  (user, tool or system turns), not the whole conversation: the rollout owns
  the conversation, and the assistant's own message is never echoed back.
* ``terminated`` and ``truncated`` stay separate (see :class:`StepResult`).
* ``agent_view(conversation)`` decides what the agent is prompted with on its
  next turn (identity by default; context policies in
  :mod:`turnrl.environments.context` drop, summarise or edit earlier turns).
  The trajectory keeps the whole conversation, and a turn whose prompt does
  not extend the previous turn's becomes a separate training sequence of the
  same trajectory (:mod:`turnrl.training.layout`).
* Each episode runs on its own instance made by ``clone()`` (default: a deep
  copy), so environments keep per-episode state on ``self`` without locks.
  Subclasses holding resources that must not be copied (a model, a client,
  a connection) override ``clone()``.
* ``Environment`` is a plain base class rather than an ``abc.ABC``: a missing
  ``reset``/``step`` fails when called, with a message naming the subclass,
  and ``turnrl.environments.check_env`` reports it before training starts.
* The rollout checks every ``reset``/``step`` result with :func:`checked_reset`
  and :func:`checked_step`: a wrong shape (a string, ``None``, Gym's old
  4-tuple), a reward that is not a finite number within ``|r| <= 1e6``
  (:mod:`turnrl.scores`) or a ``terminated``/``truncated`` that is not a bool
  fails that episode with an ``EnvContractError`` naming the environment, the
  value and the contract; the run goes on without it.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from turnrl.scores import check_reward
from turnrl.types import Message, Scenario, StepResult

RESET_CONTRACT = "reset() must return (observation: list[Message], info: dict)"
STEP_CONTRACT = (
    "step() must return turnrl.environments.StepResult(observation: list[Message], "
    "reward: float, terminated: bool, truncated: bool, info: dict)"
)


class EnvContractError(TypeError):
    """An environment breaks the turnrl Environment contract."""


class Environment:
    """Base class for turnrl environments: subclass it and write ``reset``/``step``.

    Attributes:
        scenarios: Optional scenarios the trainer may sample from when none
            are passed to it explicitly. Shared by clones, so treat it as
            read-only.
    """

    scenarios: Sequence[Scenario] = ()

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode.

        The trainer calls ``reset(seed=..., options={"scenario": scenario})``;
        :func:`scenario_from_options` extracts the scenario with a clear error.

        Args:
            seed: Seeds the episode's randomness, if the environment has any.
            options: Episode options; ``options["scenario"]`` is the
                :class:`~turnrl.types.Scenario` to play.

        Returns:
            ``(observation, info)``: the opening messages the agent answers
            (usually ``scenario.prompt``), and a diagnostics dict.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement `async def reset(self, *, seed=None, "
            "options=None) -> tuple[list[Message], dict]`"
        )

    async def step(self, message: Message) -> StepResult:
        """Answer the assistant's message.

        Args:
            message: The assistant message the agent just produced (with its
                sampled ``token_ids``).

        Returns:
            A :class:`StepResult`; see it for ``terminated`` vs ``truncated``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement `async def step(self, message) -> StepResult`"
        )

    def clone(self) -> Environment:
        """A fresh, independent instance for one episode.

        The default is a deep copy that shares the ``scenarios`` collection
        (read-only task data, often thousands of items, which copying for every
        episode would make the cost of a rollout). Override this when the
        environment holds something else that must be shared rather than
        copied (a model, an HTTP client) or cannot be copied at all. A clone's
        ``reset``/``step`` must not affect the original.
        """
        memo: dict[int, Any] = {}
        scenarios = self.__dict__.get("scenarios")
        if scenarios is not None:
            memo[id(scenarios)] = scenarios
        return copy.deepcopy(self, memo)

    async def agent_view(self, conversation: list[Message]) -> list[Message]:
        """What the agent is prompted with on its next turn; the whole conversation by default.

        The rollout calls it before every ``agent.respond`` with the whole
        conversation so far (a copy: do not rely on changing it). Return the
        messages the agent should see instead: earlier messages may be dropped,
        summarised or replaced. The trajectory still records the whole
        conversation; a turn prompted with anything else keeps it in
        ``Turn.view``. It is async because a summary may come from a model.

        Rules: return a non-empty ``list[Message]``; an assistant message whose
        content you change must lose its ``token_ids`` (the sampled tokens no
        longer spell it; :func:`turnrl.environments.context.edited` does both),
        so the agent tokenizes its new text. A view that is not an extension of
        the previous turn's prompt and reply is trained as a separate sequence
        of the same trajectory: it costs another forward pass, nothing else.

        Args:
            conversation: Every message so far, oldest first.

        Returns:
            The messages of the agent's next prompt.
        """
        return list(conversation)

    async def close(self) -> None:
        """Release per-episode resources. Called once the episode is over."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def scenario_from_options(options: dict[str, Any] | None) -> Scenario:
    """The scenario passed to ``reset`` as ``options["scenario"]``.

    Args:
        options: The ``options`` argument of ``reset``.

    Returns:
        The scenario.

    Raises:
        ValueError: ``options`` is missing or holds no ``Scenario`` under
            ``"scenario"``.
    """
    if options is None:
        got = "options=None"
    elif "scenario" not in options:
        got = f"options without a 'scenario' key (keys: {sorted(options)})"
    elif not isinstance(options["scenario"], Scenario):
        got = f"options['scenario'] of type {type(options['scenario']).__name__}"
    else:
        return options["scenario"]
    raise ValueError(
        f"reset() needs a scenario: call reset(options={{'scenario': Scenario(...)}}); got {got}"
    )


async def checked_reset(
    env: Environment, *, seed: int | None = None, options: dict[str, Any] | None = None
) -> tuple[list[Message], dict[str, Any]]:
    """``await env.reset(...)``, checked against the contract.

    Returns:
        ``(observation, info)``, the observation as a list.

    Raises:
        EnvContractError: ``reset`` is not async or returned something else
            than ``(list[Message], dict)``; the message names the environment.
    """
    result = await _awaited(env, "reset", env.reset(seed=seed, options=options))
    if not isinstance(result, tuple) or len(result) != 2:
        raise _broken(env, "reset", f"returned {_shown(result)}", RESET_CONTRACT)
    observation, info = result
    observation = _observation(env, "reset", observation, RESET_CONTRACT)
    return observation, _info(env, "reset", info, RESET_CONTRACT)


async def checked_step(env: Environment, message: Message) -> StepResult:
    """``await env.step(message)``, checked against the contract.

    ``numpy.bool_`` flags and numpy or int rewards are accepted and converted.

    Returns:
        The result as a ``StepResult`` with a ``float`` reward and ``bool`` flags.

    Raises:
        EnvContractError: ``step`` is not async, returned something else than
            a 5-field ``StepResult``, or a field breaks the contract (reward
            not a finite number with ``|reward| <= 1e6``, a flag not a bool,
            info not a dict); the message names the environment and the value.
    """
    result = await _awaited(env, "step", env.step(message))
    if not isinstance(result, tuple) or len(result) != 5:
        raise _broken(env, "step", f"returned {_shown(result)}", STEP_CONTRACT)
    observation, reward, terminated, truncated, info = result
    observation = _observation(env, "step", observation, STEP_CONTRACT)
    try:
        reward = check_reward(reward)
    except ValueError as e:
        raise _broken(env, "step", str(e).replace("returned", "returned reward", 1), "") from None
    flags = []
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(flag, bool | np.bool_):
            problem = f"returned {name}={_shown(flag)}, expected a bool"
            raise _broken(env, "step", problem, "return True or False (convert with bool(...))")
        flags.append(bool(flag))
    return StepResult(
        observation, reward, flags[0], flags[1], _info(env, "step", info, STEP_CONTRACT)
    )


async def checked_agent_view(env: Environment, conversation: list[Message]) -> list[Message]:
    """``await env.agent_view(conversation)``, checked against the contract.

    Returns:
        The view, as a new list.

    Raises:
        EnvContractError: ``agent_view`` is not async, returned something other
            than a non-empty ``list[Message]``, or an assistant message whose
            content differs from the sampled one while it keeps its ``token_ids``.
    """
    view = await _awaited(env, "agent_view", env.agent_view(list(conversation)))
    contract = "agent_view() must return a non-empty list[Message]"
    view = _observation(env, "agent_view", view, contract, what="view")
    if not view:
        raise _broken(env, "agent_view", "returned an empty view", contract)
    sampled = {
        (m.content, tuple(m.token_ids))
        for m in conversation
        if m.role == "assistant" and m.token_ids is not None
    }
    for i, m in enumerate(view):
        if m.token_ids is not None and (m.content, tuple(m.token_ids)) not in sampled:
            problem = (
                f"returned view[{i}], an assistant message whose text is not the one its "
                "token_ids were sampled as"
            )
            fix = (
                "drop the token ids of an edited message: message.model_copy(update={'content': "
                "text, 'token_ids': None}) (turnrl.environments.context.edited)"
            )
            raise _broken(env, "agent_view", problem, fix)
    return view


def _name(env: Environment) -> str:
    # Wrappers forward to the user's environment: name that one.
    return type(getattr(env, "unwrapped", env)).__name__


def _shown(value: Any) -> str:
    """``value`` for an error message: its type, a short repr, and a tuple's length."""
    text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} values {text}"
    return "None" if value is None else f"{type(value).__name__} {text}"


def _broken(env: Environment, method: str, problem: str, fix: str) -> EnvContractError:
    return EnvContractError(f"{_name(env)}.{method}() {problem}" + (f"; {fix}" if fix else ""))


async def _awaited(env: Environment, method: str, call: Any) -> Any:
    if not inspect.isawaitable(call):
        raise _broken(
            env,
            method,
            f"is not async (it returned {_shown(call)} instead of a coroutine)",
            f"define it as `async def {method}(...)`; run blocking work with "
            "`await anyio.to_thread.run_sync(fn, ...)`",
        )
    return await call


def _observation(
    env: Environment, method: str, observation: Any, contract: str, what: str = "observation"
) -> list[Message]:
    if not isinstance(observation, list | tuple):
        problem = f"returned {what} {_shown(observation)}, expected list[Message]"
        raise _broken(env, method, problem, contract)
    for i, m in enumerate(observation):
        if not isinstance(m, Message):
            problem = f"returned {what}[{i}] {_shown(m)}, expected a Message"
            fix = "wrap text as turnrl.types.user(text) or Message(role='user', content=text)"
            raise _broken(env, method, problem, fix)
    return list(observation)


def _info(env: Environment, method: str, info: Any, contract: str) -> dict[str, Any]:
    if not isinstance(info, dict):
        problem = f"returned info {_shown(info)}, expected a dict ({{}} if there is none)"
        raise _broken(env, method, problem, contract)
    return info
