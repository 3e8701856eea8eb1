"""ConversationEnvironment: scenarios played against a simulated user.

The agent under training plays the assistant; after each of its messages a
simulated user replies. The user can be:

* a script, :class:`ScriptedUser`: fixed replies given in order, the same for
  every scenario; when they run out the conversation ends;
* a function, :class:`CallableUser`: ``fn(conversation, scenario)`` returns
  the reply (``str`` or ``Message``), or ``None`` to end the conversation;
  sync or async;
* another agent, :class:`AgentUser`: anything with
  ``async respond(conversation) -> Turn`` (for example a frozen model). It
  sees the conversation from its side: roles flipped, system messages replaced
  by a persona, taken per scenario from ``scenario.data["persona"]``.

The raw forms (a list of strings, a function, an agent) are converted to these
classes, so ``ConversationEnvironment(scenarios, ["Thanks!", "Bye"])`` works.

Choices, and why:

* The user object is shared by every clone of the environment (one per
  concurrent episode), so users keep no per-episode state: a script finds its
  next line by counting the assistant messages in the conversation, and an
  agent user is a model that should be loaded once, not deep-copied.
* The user replies even on the step that hits ``max_turns``: a truncated step
  still returns its true next observation, which is the state GAE bootstraps
  from.
* ``turn_reward(conversation, scenario)`` is computed after the user's reply,
  so it can judge the assistant by the user's reaction. Whole-conversation
  rewards belong in ``turnrl.rewards``; this hook is for per-turn shaping.
* The user ending the conversation *terminates* the episode (the task's own
  end); ``max_turns`` *truncates* it, with the same rule as
  :class:`~turnrl.environments.wrappers.TurnLimit`.
* A model playing the user is frozen: it is part of the environment, and an
  environment that moves with the policy is no fixed target (the user could
  learn to be easy to please). :class:`AgentUser` therefore refuses a model
  with trainable parameters unless told ``frozen=False`` (self-play on
  purpose). :func:`frozen_copy` makes a frozen, separate copy of an agent
  (its own weights and generation engine, ``requires_grad`` off, eval mode),
  so the trainer's updates of the policy never reach it; a different model,
  loaded on its own, is frozen in place with :func:`freeze`. Generation never
  builds a graph (the engine runs under ``no_grad``), so no gradient reaches
  the user either way; freezing makes the separation explicit and checked.
* The user's reply is a plain ``user`` message (content only, no token ids):
  the policy tokenizes it as environment text, so the loss mask is 0 on it,
  like on any user or tool message.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog

from turnrl.agents.base import Agent
from turnrl.environments.base import Environment, StepResult, scenario_from_options
from turnrl.environments.wrappers import apply_turn_limit, check_max_turns
from turnrl.types import Message, Scenario

if TYPE_CHECKING:
    from turnrl.agents.engine import SamplingParams
    from turnrl.agents.transformers import TransformersAgent

log = structlog.get_logger(__name__)

Reply = str | Message | None
UserFn = Callable[[list[Message], Scenario], Reply | Awaitable[Reply]]
TurnRewardFn = Callable[[list[Message], Scenario], float | Awaitable[float]]


@runtime_checkable
class SimulatedUser(Protocol):
    """Who replies to the assistant. Shared across episodes: keep no episode state."""

    async def reply(self, conversation: Sequence[Message], scenario: Scenario) -> Message | None:
        """The user's next message, or ``None`` to end the conversation."""
        ...


class ScriptedUser:
    """Replies with fixed lines in order; ends the conversation when they run out.

    The k-th assistant message of the episode (not counting any in
    ``scenario.prompt``) gets ``replies[k - 1]``.

    Args:
        replies: The user's lines, the same for every scenario.
    """

    def __init__(self, replies: Sequence[str]) -> None:
        if isinstance(replies, str) or not all(isinstance(r, str) for r in replies):
            raise TypeError("ScriptedUser takes a sequence of strings, e.g. ['Thanks!', 'Bye']")
        self.replies = tuple(replies)

    async def reply(self, conversation: Sequence[Message], scenario: Scenario) -> Message | None:
        # Counting rather than keeping an index keeps the user stateless.
        episode = conversation[len(scenario.prompt) :]
        k = sum(m.role == "assistant" for m in episode)
        if not 1 <= k <= len(self.replies):
            return None
        return Message(role="user", content=self.replies[k - 1])


class CallableUser:
    """Replies with ``fn(conversation, scenario)``; ``None`` ends the conversation.

    Args:
        fn: Sync or async function returning a ``str`` (sent as a user
            message), a ``Message`` (user, tool or system) or ``None``.
    """

    def __init__(self, fn: UserFn) -> None:
        if not callable(fn):
            raise TypeError(f"CallableUser takes a function, got {type(fn).__name__}")
        self.fn = fn

    async def reply(self, conversation: Sequence[Message], scenario: Scenario) -> Message | None:
        out = self.fn(list(conversation), scenario)
        if inspect.isawaitable(out):
            out = await out
        if out is None:
            return None
        if isinstance(out, str):
            return Message(role="user", content=out)
        if isinstance(out, Message):
            if out.role == "assistant":
                raise ValueError("a simulated user must not reply with an assistant message")
            return out
        raise TypeError(
            f"user function {getattr(self.fn, '__name__', self.fn)!r} returned "
            f"{type(out).__name__}; expected str, Message or None"
        )


_FLIP = {"user": "assistant", "assistant": "user"}


def flip_roles(conversation: Sequence[Message], persona: str | None = None) -> list[Message]:
    """The conversation as the simulated user sees it.

    User and assistant swap roles; system messages are replaced by the persona
    (a single system message first, if given); tool messages are dropped (the
    user does not see the assistant's tool traffic). Token ids are dropped:
    they belong to the policy's tokenizer, not the user model's.

    Args:
        conversation: The conversation from the assistant's side.
        persona: The user's system prompt, or ``None``.

    Returns:
        New messages with role and content only.
    """
    flipped = [Message(role="system", content=persona)] if persona else []
    flipped += [
        Message(role=_FLIP[m.role], content=m.content) for m in conversation if m.role in _FLIP
    ]
    return flipped


def is_frozen(agent: object) -> bool:
    """Whether no parameter of ``agent.model`` requires a gradient.

    Agents without a ``model`` (fakes, scripted or remote agents) count as
    frozen: nothing of theirs can be trained here.
    """
    parameters = getattr(getattr(agent, "model", None), "parameters", None)
    return parameters is None or not any(p.requires_grad for p in parameters())


def freeze(agent: TransformersAgent) -> TransformersAgent:
    """Freeze ``agent.model`` in place (eval mode, ``requires_grad`` off); returns ``agent``.

    For a model loaded on its own, never the policy: freezing the policy's
    model would stop its training. Use :func:`frozen_copy` for a copy of it.
    """
    agent.model.eval().requires_grad_(False)
    return agent


def frozen_copy(
    agent: TransformersAgent, *, sampling: SamplingParams | None = None
) -> TransformersAgent:
    """A frozen copy of ``agent``: its own weights and engine, never trained.

    The copy is taken now: later updates of ``agent``'s model do not reach it.
    The tokenizer is shared (it is not modified). Costs one more copy of the
    weights in memory.

    Args:
        agent: The agent to copy, typically the policy before training.
        sampling: The copy's default sampling (default: ``agent``'s).

    Returns:
        A new ``TransformersAgent`` with a deep-copied, frozen model.
    """
    from turnrl.agents.transformers import TransformersAgent

    model = copy.deepcopy(agent.model).eval().requires_grad_(False)
    return TransformersAgent(
        model,
        agent.tokenizer,
        sampling=sampling or agent.sampling,
        max_batch_size=agent.engine.max_batch_size,
    )


class AgentUser:
    """Replies with another agent, which sees the conversation with roles flipped.

    The persona (the user model's system prompt) is chosen per scenario:
    ``scenario.data["persona"]`` if present, else the default ``persona``.
    The reply is a ``user`` message with the agent's text only.

    Args:
        agent: Anything with ``async respond(conversation) -> Turn``.
        persona: Default persona (system prompt) for scenarios whose
            ``data`` has no ``"persona"``.
        frozen: Require the agent's model (if it has one) to be frozen, see
            :func:`frozen_copy` and :func:`freeze`. ``False`` lets the user
            share the policy's changing weights (self-play).

    Raises:
        TypeError: ``agent`` is not an Agent.
        ValueError: ``frozen`` is True and the agent's model has trainable
            parameters.
    """

    def __init__(self, agent: Agent, *, persona: str | None = None, frozen: bool = True) -> None:
        if not isinstance(agent, Agent):
            raise TypeError(f"AgentUser takes an Agent (async respond), got {type(agent).__name__}")
        if frozen and not is_frozen(agent):
            raise ValueError(
                "the simulated user's model has trainable parameters; a user that shares the "
                "policy's weights changes with every update. Pass AgentUser(frozen_copy(agent)) "
                "for a frozen copy, freeze(agent) for a model loaded on its own, or "
                "frozen=False for self-play on purpose"
            )
        self.agent = agent
        self.persona = persona

    async def reply(self, conversation: Sequence[Message], scenario: Scenario) -> Message | None:
        persona = scenario.data.get("persona", self.persona)
        turn = await self.agent.respond(flip_roles(conversation, persona))
        return Message(role="user", content=turn.message.content)


UserLike = SimulatedUser | Sequence[str] | UserFn | Agent


def as_user(user: UserLike) -> SimulatedUser:
    """Convert a script, function or agent into a :class:`SimulatedUser`.

    Raises:
        TypeError: ``user`` is none of the accepted forms.
    """
    if isinstance(user, SimulatedUser):
        return user
    if isinstance(user, Agent):
        return AgentUser(user)
    if isinstance(user, Sequence) and not isinstance(user, str):
        return ScriptedUser(user)
    if callable(user):
        return CallableUser(user)
    raise TypeError(
        "user must be a list of reply strings, a function (conversation, scenario) -> "
        "str | Message | None, an Agent, or an object with async reply(conversation, "
        f"scenario); got {type(user).__name__}"
    )


class ConversationEnvironment(Environment):
    """Scenarios played as conversations with a simulated user.

    ``reset(options={"scenario": s})`` returns a copy of ``s.prompt``. Each
    ``step`` appends the assistant's message, lets the user reply (the
    observation), and scores the turn with ``turn_reward``.

    Args:
        scenarios: Scenarios the trainer may sample from.
        user: A :class:`SimulatedUser` or a raw form (see :func:`as_user`).
        max_turns: Truncate after this many assistant turns; ``None``: no limit.
        turn_reward: Sync or async ``(conversation, scenario) -> float``, the
            reward of each step; default 0.0.

    Raises:
        TypeError: ``user`` is not an accepted form.
        ValueError: ``max_turns`` is not an integer >= 1.
    """

    def __init__(
        self,
        scenarios: Sequence[Scenario],
        user: UserLike,
        *,
        max_turns: int | None = None,
        turn_reward: TurnRewardFn | None = None,
    ) -> None:
        self.scenarios = tuple(scenarios)
        self.user = as_user(user)
        self.max_turns = None if max_turns is None else check_max_turns(max_turns)
        self.turn_reward = turn_reward
        self._clear_episode()

    def _clear_episode(self) -> None:
        self._scenario: Scenario | None = None
        self._conversation: list[Message] = []
        self._turns = 0
        self._done = False

    @property
    def conversation(self) -> list[Message]:
        """A copy of the current episode's conversation."""
        return list(self._conversation)

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        scenario = scenario_from_options(options)
        self._clear_episode()
        self._scenario = scenario
        self._conversation = list(scenario.prompt)
        return list(scenario.prompt), {"scenario_id": scenario.id}

    async def step(self, message: Message) -> StepResult:
        if self._scenario is None:
            raise RuntimeError("ConversationEnvironment.step() called before reset()")
        if self._done:
            raise RuntimeError("ConversationEnvironment.step() called after the episode ended")
        if message.role != "assistant":
            raise ValueError(f"step() takes the assistant's message, got role {message.role!r}")
        self._conversation.append(message)
        self._turns += 1

        reply = await self.user.reply(list(self._conversation), self._scenario)
        observation = [] if reply is None else [reply]
        self._conversation += observation
        reward = await self._reward()
        result = StepResult(
            observation=observation,
            reward=reward,
            terminated=reply is None,
            truncated=False,
            info={"turn": self._turns, "user_ended": reply is None},
        )
        result = apply_turn_limit(result, self._turns, self.max_turns)
        self._done = result.terminated or result.truncated
        return result

    async def _reward(self) -> float:
        if self.turn_reward is None:
            return 0.0
        value = self.turn_reward(list(self._conversation), self._scenario)
        if inspect.isawaitable(value):
            value = await value
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"turn_reward must return a float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"turn_reward must return a finite float, got {value!r}")
        return float(value)

    def clone(self) -> ConversationEnvironment:
        """A fresh instance sharing the user, scenarios and reward function.

        Sharing matters for an :class:`AgentUser`, whose model must not be
        deep-copied. Other attributes (a subclass's) are deep-copied; the
        clone starts with no episode.
        """
        shared = (self.user, self.scenarios, self.turn_reward)
        new = copy.deepcopy(self, {id(obj): obj for obj in shared})
        new._clear_episode()
        return new
