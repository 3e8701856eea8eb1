"""check_chat_template: does a chat template keep earlier turns as they were sampled?

turnrl trains on the tokens the model saw and sampled. When a template renders
a longer conversation as the shorter one's text followed by new text
("prefix-preserving"), an episode is one training sequence: its prompts and
completions line up ("prefix" mode). Templates of reasoning models rewrite
history instead: Qwen3-style templates drop the ``<think>`` block of earlier
turns and insert an empty one after the last user query; Llama-3 templates
trim content. The prompt of a later turn then no longer extends the earlier
turn's prompt and completion, and the episode becomes several training samples,
one where the template rewrites ("step-wise" mode).

:func:`check_chat_template` renders a probe conversation (system, user, an
assistant turn with a reasoning block and a tool call, a tool answer, more
user and assistant turns) turn by turn, as an episode would be, and reports
the verdict as a :class:`TemplateReport`. The trainer runs it at start and
refuses a template it cannot use at all.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from collections.abc import Sequence
from typing import Any, Literal

from turnrl.agents.templates import ChatTemplateError, Tools, no_template_message, render_chat
from turnrl.types import Message

Mode = Literal["prefix", "step-wise"]

_CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 17, "b": 23}}\n</tool_call>'
PROBE: tuple[Message, ...] = (
    Message(role="system", content="You are a careful assistant."),
    Message(role="user", content="What is 17 * 23?"),
    Message(role="assistant", content=f"<think>\nThe calculator is exact.\n</think>\n\n{_CALL}"),
    Message(role="tool", content="391"),
    Message(role="assistant", content="17 * 23 = 391.\n"),  # trailing whitespace: trimmed?
    Message(role="user", content="And 391 + 9?"),
    Message(role="assistant", content="<think>\n391 + 9 = 400.\n</think>\n\nIt is 400."),
    Message(role="user", content="Thanks!"),
    Message(role="assistant", content="You are welcome."),
)
"""The conversation :func:`check_chat_template` renders turn by turn."""

_OPTIONAL_ROLES = ("system", "tool")  # left out of the probe when the template rejects them


@dataclasses.dataclass(frozen=True)
class TemplateRewrite:
    """A message that a later prompt renders differently from when it was sampled.

    Attributes:
        turn: Index of the message in the probe conversation.
        role: Its role.
        seen_at: Index of the assistant turn whose prompt shows the change.
        diff: How it changed (``removed '...'``, ``inserted '...'``).
    """

    turn: int
    role: str
    seen_at: int
    diff: str

    def __str__(self) -> str:
        return f"turn {self.turn} ({self.role}), in the prompt of turn {self.seen_at}: {self.diff}"


@dataclasses.dataclass(frozen=True)
class TemplateReport:
    """What :func:`check_chat_template` found.

    Attributes:
        usable: Whether turnrl can train with the template.
        mode: ``"prefix"`` (one training sequence per episode) or ``"step-wise"``
            (several samples per episode, split where the template rewrites);
            None when the template is not usable.
        prefix_preserving: Whether every prompt extends the previous prompt and
            the assistant's content.
        assistant_content: ``"verbatim"`` (every later prompt holds each
            assistant message as sampled), ``"rewritten"`` (the reply is kept,
            reasoning or whitespace changed) or ``"dropped"`` (a reply is lost).
        rewrites: The messages later prompts render differently.
        problem: Why the template cannot be used, and what to do (None if usable).
        notes: Roles left out of the probe because the template rejects them.
        template_kwargs: The template arguments the probe rendered with.
    """

    usable: bool
    mode: Mode | None
    prefix_preserving: bool
    assistant_content: Literal["verbatim", "rewritten", "dropped"] | None
    rewrites: tuple[TemplateRewrite, ...] = ()
    problem: str | None = None
    notes: tuple[str, ...] = ()
    template_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.template_kwargs.items())
        head = f"chat template{f' ({args})' if args else ''}: "
        if not self.usable:
            return head + f"NOT USABLE. {self.problem}"
        lines = [
            head
            + f"mode {self.mode}: "
            + (
                "prefix-preserving, one training sequence per episode"
                if self.prefix_preserving
                else "rewrites earlier turns, so an episode becomes several training "
                "samples, split where the prompt stops extending the previous turn"
            ),
            f"  assistant content: {self.assistant_content}",
        ]
        lines += [f"  rewrites {r}" for r in self.rewrites]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def raise_if_unusable(self) -> None:
        """Raise :class:`ChatTemplateError` with :attr:`problem` when not :attr:`usable`."""
        if not self.usable:
            raise ChatTemplateError(str(self))


def check_chat_template(
    tokenizer: Any,
    *,
    conversation: Sequence[Message] | None = None,
    tools: Tools = None,
    **template_kwargs: Any,
) -> TemplateReport:
    """Render a probe conversation turn by turn and say how turnrl will train with it.

    Args:
        tokenizer: A Hugging Face tokenizer (its ``chat_template`` is checked).
        conversation: The probe (default :data:`PROBE`); its assistant
            messages play the sampled turns.
        tools: JSON schemas passed to the template, as the rollout passes the
            environment's tools.
        **template_kwargs: Template arguments, e.g. ``enable_thinking=False``.

    Returns:
        The verdict; ``str(report)`` reads as a short summary. A missing
        template, one that raises on the probe, or one that loses what the
        assistant said gives ``usable=False`` with the turn and the fix in
        ``problem``.

    Example:
        >>> from turnrl.agents.tiny import build_tiny_tokenizer
        >>> check_chat_template(build_tiny_tokenizer()).mode
        'prefix'
    """
    kwargs = dict(template_kwargs)
    if not getattr(tokenizer, "chat_template", None):
        return _unusable(no_template_message(tokenizer), kwargs)
    messages = list(PROBE if conversation is None else conversation)
    notes: list[str] = []
    while True:
        failure = _first_failure(tokenizer, messages, tools, kwargs)
        if failure is None:
            break
        index, error = failure
        role = messages[index].role
        if conversation is None and role in _OPTIONAL_ROLES:
            notes.append(f"the template rejects a {role!r} message ({error}); probed without")
            messages = [m for m in messages if m.role != role]
            continue
        return _unusable(
            f"rendering turn {index} ({role}) of the probe raised: {error}. Fix the template "
            "(tokenizer.chat_template) or its arguments (model.chat_template_kwargs)",
            kwargs,
        )
    if conversation is None and _opens_reasoning(tokenizer, messages, tools, kwargs):
        # The template writes the (empty) reasoning block itself; the model only replies.
        messages = [_without_reasoning(m) for m in messages]
    return _verdict(tokenizer, messages, tools, kwargs, tuple(notes))


def _opens_reasoning(
    tokenizer: Any, messages: list[Message], tools: Tools, kwargs: dict[str, Any]
) -> bool:
    """Whether the generation prompt closes a reasoning block (``enable_thinking=False``)."""
    first = next(i for i, m in enumerate(messages) if m.role == "assistant")
    opened = _render(tokenizer, messages[:first], True, tools, kwargs)
    plain = _render(tokenizer, messages[:first], False, tools, kwargs)
    return "</think>" in opened[len(_common_prefix(opened, plain)) :]


def _without_reasoning(message: Message) -> Message:
    if message.role != "assistant" or "</think>" not in message.content:
        return message
    return message.model_copy(update={"content": _reply(message.content)})


def _first_failure(
    tokenizer: Any, messages: list[Message], tools: Tools, kwargs: dict[str, Any]
) -> tuple[int, str] | None:
    """The first message whose rendering (with the ones before it) raises, and the error."""
    for k in range(1, len(messages) + 1):
        for gen in (False, True):
            try:
                _render(tokenizer, messages[:k], gen, tools, kwargs)
            except ChatTemplateError as e:
                cause = e.__cause__ or e
                return k - 1, f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    return None


def _verdict(
    tokenizer: Any,
    messages: list[Message],
    tools: Tools,
    kwargs: dict[str, Any],
    notes: tuple[str, ...],
) -> TemplateReport:
    def render(upto: int, gen: bool) -> str:
        return _render(tokenizer, messages[:upto], gen, tools, kwargs)

    turns = [i for i, m in enumerate(messages) if m.role == "assistant"]
    prompts = {i: render(i, True) for i in turns}
    rewrites: list[TemplateRewrite] = []
    verbatim = True
    for i, j in itertools.pairwise(turns):
        expected = prompts[i] + messages[i].content
        later = prompts[j]
        for k in turns:
            if k >= j:
                break
            reply = _reply(messages[k].content)
            if reply not in later:
                return _unusable(
                    f"turn {k} (assistant): the prompt of turn {j} does not contain what the "
                    f"assistant said ({reply!r}), so the model would not see its own replies. "
                    "Fix the template to render each message's 'content' (turnrl passes "
                    "messages as {'role', 'content'})",
                    kwargs,
                )
            verbatim = verbatim and messages[k].content in later
        if not later.startswith(expected):
            rewrites.append(_rewrite(messages, expected, later, i, j))
    for i in turns:  # the reply must survive its own rendering too
        if _reply(messages[i].content) not in render(i + 1, False):
            return _unusable(
                f"turn {i} (assistant): rendering the conversation up to it drops what the "
                f"assistant said ({_reply(messages[i].content)!r}). Fix the template to render "
                "each message's 'content' (turnrl passes messages as {'role', 'content'})",
                kwargs,
            )
    prefix = not rewrites
    return TemplateReport(
        usable=True,
        mode="prefix" if prefix else "step-wise",
        prefix_preserving=prefix,
        assistant_content="verbatim" if verbatim else "rewritten",
        rewrites=tuple(rewrites),
        notes=notes,
        template_kwargs=kwargs,
    )


def _render(
    tokenizer: Any, messages: Sequence[Message], gen: bool, tools: Tools, kwargs: dict[str, Any]
) -> str:
    return render_chat(
        tokenizer, messages, add_generation_prompt=gen, tools=tools, template_kwargs=kwargs
    )


def _reply(content: str) -> str:
    """What the assistant said, without a leading reasoning block."""
    return content.split("</think>")[-1].strip()


def _rewrite(
    messages: list[Message], expected: str, later: str, turn: int, seen_at: int
) -> TemplateRewrite:
    """Which message ``later`` renders differently from ``expected``, and how."""
    split = len(_common_prefix(expected, later))
    start, k = 0, 0
    cursor = 0
    for k, message in enumerate(messages[: turn + 1]):
        found = expected.find(message.content, cursor) if message.content else -1
        end = found + len(message.content) if found >= 0 else cursor
        if split < end or k == turn:
            break
        start = cursor = end
    end_a = expected.find(messages[k].content, start)
    end_a = len(expected) if end_a < 0 else end_a + len(messages[k].content)
    end_b = -1
    for needle in (messages[k].content, _reply(messages[k].content)):
        found = later.find(needle, start) if needle else -1
        if found >= 0:
            end_b = found + len(needle)
            break
    if end_b < 0:
        end_b = min(len(later), end_a + 200)
    a, b = expected[start:end_a], later[start:end_b]
    changes = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        if op == "delete":
            changes.append(f"removed {_clip(_at_tag(a, i1, i2))}")
        elif op == "insert":
            changes.append(f"inserted {_clip(_at_tag(b, j1, j2))}")
        else:
            changes.append(f"replaced {_clip(a[i1:i2])} with {_clip(b[j1:j2])}")
    diff = "; ".join(changes[:3]) or f"changed after {_clip(expected[max(0, split - 30) : split])}"
    return TemplateRewrite(turn=k, role=messages[k].role, seen_at=seen_at, diff=diff)


def _at_tag(text: str, i: int, j: int) -> str:
    """``text[i:j]``, shifted to an equal edit that starts at a tag (``<think>``), if one does.

    Where an edit lands among repeated characters is arbitrary (``'\n<think>...\n'`` and
    ``'<think>...\n\n'`` are the same removal); the one starting with ``<`` reads best.
    """
    for shift in (0, 1, -1, 2, -2):
        a, b = i + shift, j + shift
        inside = a >= 0 and b <= len(text)
        if inside and text[a:b].startswith("<") and _same_edit(text, i, j, shift):
            return text[a:b]
    return text[i:j]


def _same_edit(text: str, i: int, j: int, shift: int) -> bool:
    """Whether removing ``text[i+shift:j+shift]`` leaves what removing ``text[i:j]`` does."""
    return text[:i] + text[j:] == text[: i + shift] + text[j + shift :]


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _unusable(problem: str, kwargs: dict[str, Any]) -> TemplateReport:
    return TemplateReport(
        usable=False,
        mode=None,
        prefix_preserving=False,
        assistant_content=None,
        problem=problem,
        template_kwargs=kwargs,
    )
