"""Context policies: what the agent sees of a long conversation, as environment wrappers.

Each policy is a :class:`~turnrl.environments.wrappers.Wrapper` that changes
only ``agent_view`` (see :meth:`Environment.agent_view
<turnrl.environments.base.Environment.agent_view>`), so it composes with any
environment and with the others, innermost first::

    env = Summarize(KeepLastTurns(DropReasoning(MyEnv()), 4), summarize, max_size=2000)

* :class:`KeepLastTurns`: the opening messages and the last ``k`` turns.
* :class:`DropReasoning`: reasoning blocks (``<think>...</think>`` by default)
  removed from every assistant message but the last ones, as reasoning
  models' chat templates do.
* :class:`Summarize`: when the view grows past ``max_size`` (characters, or
  tokens with :func:`token_count`), the turns before the last ones are folded
  into one summary message made by a callable (:func:`summarize_with` asks an
  agent, the policy itself or another model). The summarising call is not a
  turn of the episode and is never trained on.

A *turn* here is an assistant message and the environment messages that
follow it; the *opening* is everything before the first assistant message
(the system prompt and the first user message), which every policy keeps.
An assistant message whose text a policy changes loses its ``token_ids``
(:func:`edited`): its sampled tokens no longer spell it, so the agent
tokenizes the new text. The trajectory always keeps the whole conversation;
turns whose prompt is no longer an extension of the previous turn train as
separate sequences of the same trajectory (:mod:`turnrl.training.layout`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from turnrl.environments.base import Environment
from turnrl.environments.wrappers import Wrapper
from turnrl.types import Message, Role, system, user

Summarizer = Callable[[list[Message]], Awaitable[str]]
"""The messages to fold (a previous summary first, if any) -> the summary's text."""

Measure = Callable[[Sequence[Message]], int]
"""The size of a view: characters (:func:`characters`) or tokens (:func:`token_count`)."""

THINK = r"<think>.*?</think>\s*"
"""The default reasoning block: ``<think>...</think>`` and the whitespace after it."""


def edited(message: Message, content: str) -> Message:
    """``message`` with new text; without its sampled ``token_ids``, which spell the old text.

    >>> edited(Message(role="assistant", content="a", token_ids=[5]), "b").token_ids is None
    True
    """
    if content == message.content:
        return message
    return message.model_copy(update={"content": content, "token_ids": None})


def split_turns(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """The opening (messages before the first assistant one) and the turns after it.

    Each turn is an assistant message and the non-assistant messages that follow it.

    >>> from turnrl.types import assistant
    >>> head, turns = split_turns([user("q"), assistant("a"), user("no"), assistant("b")])
    >>> [m.content for m in head], [[m.content for m in t] for t in turns]
    (['q'], [['a', 'no'], ['b']])
    """
    head: list[Message] = []
    turns: list[list[Message]] = []
    for m in messages:
        if m.role == "assistant":
            turns.append([m])
        elif turns:
            turns[-1].append(m)
        else:
            head.append(m)
    return head, turns


def keep_last_turns(messages: Sequence[Message], turns: int) -> list[Message]:
    """The opening and the last ``turns`` turns of ``messages``.

    >>> from turnrl.types import assistant
    >>> view = keep_last_turns([user("q"), assistant("a"), user("no"), assistant("b")], 1)
    >>> [m.content for m in view]
    ['q', 'b']
    """
    head, blocks = split_turns(messages)
    return head + [m for block in blocks[max(len(blocks) - turns, 0) :] for m in block]


def drop_reasoning(
    messages: Sequence[Message], pattern: str | re.Pattern[str] = THINK, *, keep_last: int = 1
) -> list[Message]:
    """``messages`` with ``pattern`` removed from all assistant messages but the last ``keep_last``.

    >>> from turnrl.types import assistant
    >>> view = drop_reasoning([assistant("<think>hm</think> 7"), user("no"), assistant("8")])
    >>> [m.content for m in view]
    ['7', 'no', '8']
    """
    regex = re.compile(pattern, re.DOTALL) if isinstance(pattern, str) else pattern
    replies = [i for i, m in enumerate(messages) if m.role == "assistant"]
    older = set(replies[: max(len(replies) - keep_last, 0)])
    return [
        edited(m, regex.sub("", m.content)) if i in older else m for i, m in enumerate(messages)
    ]


def characters(messages: Sequence[Message]) -> int:
    """The size of a view in characters of message text."""
    return sum(len(m.content) for m in messages)


def token_count(tokenizer: Any) -> Measure:
    """A measure counting the tokens of a view as ``tokenizer``'s chat template renders it.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template (``agent.tokenizer``).
    """

    def count(messages: Sequence[Message]) -> int:
        text = tokenizer.apply_chat_template(
            [m.to_chat() for m in messages], tokenize=False, add_generation_prompt=True
        )
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    return count


def summarize_with(
    agent: Any,
    instruction: str = "Summarize this conversation briefly, keeping every fact needed to go on.",
    **respond_kwargs: Any,
) -> Summarizer:
    """A :data:`Summarizer` that asks ``agent`` (the policy itself, or another model).

    The agent gets a system message ``instruction`` and a user message holding
    the folded messages as ``role: text`` lines, and its reply is the summary.
    The reply is not part of any trajectory, so it is never trained on.

    Args:
        agent: Anything with ``async respond(conversation, **kwargs) -> Turn``.
        instruction: The system message.
        **respond_kwargs: Passed to ``respond`` (``sampling=SamplingParams(...)``).
    """

    async def summarize(messages: list[Message]) -> str:
        transcript = "\n".join(f"{m.role}: {m.content}" for m in messages)
        turn = await agent.respond([system(instruction), user(transcript)], **respond_kwargs)
        return turn.message.content

    return summarize


class KeepLastTurns(Wrapper):
    """Show the agent the opening messages and only the last ``turns`` turns.

    Args:
        env: The environment to wrap.
        turns: Turns kept (>= 1).

    Raises:
        ValueError: ``turns`` is not an integer >= 1.
    """

    def __init__(self, env: Environment, turns: int) -> None:
        super().__init__(env)
        if isinstance(turns, bool) or not isinstance(turns, int) or turns < 1:
            raise ValueError(f"turns must be an integer >= 1, got {turns!r}")
        self.turns = turns

    async def agent_view(self, conversation: list[Message]) -> list[Message]:
        return keep_last_turns(await self.env.agent_view(conversation), self.turns)


class DropReasoning(Wrapper):
    """Remove reasoning blocks from every assistant message but the last ``keep_last``.

    Args:
        env: The environment to wrap.
        pattern: A regular expression (compiled with ``re.DOTALL`` when given
            as a string) matching one block; default :data:`THINK`.
        keep_last: The most recent assistant messages left whole (>= 0).

    Raises:
        ValueError: ``keep_last`` is negative, or ``pattern`` does not compile.
    """

    def __init__(
        self, env: Environment, pattern: str | re.Pattern[str] = THINK, *, keep_last: int = 1
    ) -> None:
        super().__init__(env)
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
            raise ValueError(f"keep_last must be an integer >= 0, got {keep_last!r}")
        try:
            self.pattern = re.compile(pattern, re.DOTALL) if isinstance(pattern, str) else pattern
        except re.error as e:
            raise ValueError(f"pattern {pattern!r} is not a regular expression: {e}") from None
        self.keep_last = keep_last

    async def agent_view(self, conversation: list[Message]) -> list[Message]:
        view = await self.env.agent_view(conversation)
        return drop_reasoning(view, self.pattern, keep_last=self.keep_last)


class Summarize(Wrapper):
    """Fold older turns into a summary once the view grows past ``max_size``.

    The view is the opening, the summary (one ``role`` message), and the turns
    not folded yet. When it measures more than ``max_size``, the turns before
    the last ``keep_turns`` are folded, with the previous summary, into a new
    one by ``summarize``; the view stays over the limit only when nothing is
    left to fold. The summary is per episode (the wrapper's state, reset by
    ``reset``); it counts the messages it covers, so wrap it around policies
    that keep the number and order of messages (:class:`DropReasoning`), not
    inside them.

    Args:
        env: The environment to wrap.
        summarize: ``async (messages) -> str``, e.g. :func:`summarize_with`.
        max_size: The view's largest size before folding (> 0).
        measure: The size of a view (default :func:`characters`; tokens with
            :func:`token_count`).
        keep_turns: Recent turns never folded (>= 1).
        role: The summary message's role.
        template: Its text, with ``{summary}`` replaced by the summary.

    Raises:
        ValueError: A size or count out of range, or a template without ``{summary}``.
    """

    def __init__(
        self,
        env: Environment,
        summarize: Summarizer,
        *,
        max_size: int,
        measure: Measure = characters,
        keep_turns: int = 1,
        role: Role = "user",
        template: str = "Summary of the conversation so far: {summary}",
    ) -> None:
        super().__init__(env)
        if not callable(summarize):
            raise ValueError(f"summarize must be an async callable, got {summarize!r}")
        for name, value in (("max_size", max_size), ("keep_turns", keep_turns)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if "{summary}" not in template:
            raise ValueError(f"template must contain '{{summary}}', got {template!r}")
        self.summarize, self.measure = summarize, measure
        self.max_size, self.keep_turns = max_size, keep_turns
        self.role, self.template = role, template
        self.summary: Message | None = None
        self.folded = 0  # messages after the opening that the summary covers

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        self.summary, self.folded = None, 0
        return await self.env.reset(seed=seed, options=options)

    async def agent_view(self, conversation: list[Message]) -> list[Message]:
        inner = await self.env.agent_view(conversation)
        head, _ = split_turns(inner)
        rest = inner[len(head) + self.folded :]
        summary = [self.summary] if self.summary is not None else []
        if self.measure(head + summary + rest) <= self.max_size:
            return head + summary + rest
        _, rest_turns = split_turns(rest)
        kept = [m for block in rest_turns[-self.keep_turns :] for m in block]
        fold = rest[: len(rest) - len(kept)]
        if not fold:
            return head + summary + rest
        text = await self.summarize(summary + fold)
        if not isinstance(text, str):
            got = type(text).__name__
            raise TypeError(f"summarize returned {got}, expected the summary's text (a str)")
        self.summary = Message(role=self.role, content=self.template.format(summary=text))
        self.folded += len(fold)
        return [*head, self.summary, *kept]

    def clone(self) -> Summarize:
        # The summarizer and measure may hold a model or a tokenizer: shared, never copied.
        memo = {id(self.env): self.env.clone(), id(self.summarize): self.summarize}
        memo[id(self.measure)] = self.measure
        new = copy.deepcopy(self, memo)
        new.summary, new.folded = None, 0
        return new
