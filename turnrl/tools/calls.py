"""Tool-call formats: find the calls in an assistant message, and write them.

A model calls a tool by writing text in a format its chat template declares;
a :class:`ToolCallParser` reads that text back into :class:`ToolCall` objects
(and writes calls for demonstrations). The assistant message keeps the text
as sampled, so the tokens of a call are trained like any other assistant
tokens, and no template needs a structured ``tool_calls`` field.

Formats:

* :class:`HermesParser`, **the default**: ``<tool_call>{"name": ...,
  "arguments": {...}}</tool_call>``, as declared by the Hermes 2/3 and Qwen 2.5+
  templates and the most widely used one. Several calls per message are
  allowed.
* :class:`JsonParser`: the whole message is one JSON object ``{"name": ...,
  "parameters": {...}}`` (Llama 3.1+ templates); ``arguments`` is accepted too.
* :class:`CompactParser`: ``name(value, key=value)``, one call per line. Not
  a standard: it exists because the embedded character-level model learns
  ``calculator(123*456)`` (20 characters) much faster than 80 characters of
  JSON. Values are text (quote them to include ``,``, ``)`` or ``=``);
  positional values bind to the tool's parameters in declaration order.

:func:`parser_for_template` picks the format a chat template declares, and
falls back to :class:`HermesParser` for templates that declare none.

A call the parser recognizes as an attempt but cannot read (bad JSON, no name,
an unclosed tag) comes back as a :class:`ToolCall` with ``error`` set, in
order with the good ones, so the environment can answer it with an error
message instead of ignoring it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class ToolCall:
    """One tool call read from an assistant message.

    Attributes:
        name: The tool's name ('' when the call is too malformed to have one).
        arguments: Keyword arguments, as parsed (JSON values).
        args: Positional arguments (only :class:`CompactParser` produces them);
            bound to the tool's parameters in declaration order.
        error: Why the call could not be read; ``None`` for a well-formed call.
        text: The span of the message the call was read from.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    args: tuple[Any, ...] = ()
    error: str | None = None
    text: str = ""


@runtime_checkable
class ToolCallParser(Protocol):
    """A tool-call format: parse calls from text, write calls, describe tools."""

    def parse(self, text: str) -> list[ToolCall]:
        """The calls in ``text``, in order; malformed attempts have ``error`` set.

        An empty list means the message is not a tool call (a final answer).
        """
        ...

    def format(self, call: ToolCall) -> str:
        """The text a model writes to make ``call`` (for demonstrations)."""
        ...

    def describe(self, tools: Sequence[dict[str, Any]]) -> str:
        """A system-prompt text listing ``tools`` (JSON schemas) and the format.

        Used for chat templates that ignore ``tools=``.
        """
        ...


def _arguments_of(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any] | str:
    """The arguments object of a parsed call, or an error string."""
    value = next((obj[k] for k in keys if k in obj), {})
    if isinstance(value, str):  # some models write the arguments as a JSON string
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            return f'"{keys[0]}" is a string that is not a JSON object'
    if not isinstance(value, dict):
        return f'"{keys[0]}" must be a JSON object, got {type(value).__name__}'
    return value


def _call_from_json(body: str, text: str, keys: tuple[str, ...]) -> ToolCall:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall(name="", error=f"not valid JSON ({e.msg} at char {e.pos})", text=text)
    if not isinstance(obj, dict):
        return ToolCall(
            name="",
            error=f'expected a JSON object with "name" and "{keys[0]}", got {type(obj).__name__}',
            text=text,
        )
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(name="", error='the call has no "name" string', text=text)
    arguments = _arguments_of(obj, keys)
    if isinstance(arguments, str):
        return ToolCall(name=name, error=arguments, text=text)
    return ToolCall(name=name, arguments=arguments, text=text)


def _schemas_json(tools: Sequence[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(t, separators=(", ", ": ")) for t in tools)


class HermesParser:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``: the default format.

    >>> [(c.name, c.arguments) for c in HermesParser().parse(
    ...     'Let me check. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>')]
    [('add', {'a': 1})]
    >>> HermesParser().parse("<tool_call>{oops}</tool_call>")[0].error
    'not valid JSON (Expecting property name enclosed in double quotes at char 1)'
    """

    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    _BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)

    def parse(self, text: str) -> list[ToolCall]:
        calls = [
            _call_from_json(m.group(1).strip(), m.group(0), ("arguments", "parameters"))
            for m in self._BLOCK.finditer(text)
        ]
        rest = self._BLOCK.sub("", text)
        if self.OPEN in rest:  # an opened call that never closes (often cut by max_new_tokens)
            tail = rest[rest.index(self.OPEN) :]
            calls.append(
                ToolCall(name="", error=f"{self.OPEN} is never closed by {self.CLOSE}", text=tail)
            )
        return calls

    def format(self, call: ToolCall) -> str:
        body = json.dumps({"name": call.name, "arguments": call.arguments})
        return f"{self.OPEN}\n{body}\n{self.CLOSE}"

    def describe(self, tools: Sequence[dict[str, Any]]) -> str:
        return (
            "You may call tools. Their signatures:\n<tools>\n"
            f"{_schemas_json(tools)}\n</tools>\n"
            "To call one, write "
            f'{self.OPEN}{{"name": <tool name>, "arguments": <JSON object>}}{self.CLOSE}. '
            "Its result comes back in a tool message."
        )


class JsonParser:
    """The whole message is ``{"name": ..., "parameters": {...}}`` (Llama 3.1+ style).

    A message that starts with ``{`` (after an optional ``<|python_tag|>``) is
    a call; anything else is a final answer.

    >>> JsonParser().parse('{"name": "add", "parameters": {"a": 1}}')[0].arguments
    {'a': 1}
    """

    PREFIX = "<|python_tag|>"

    def parse(self, text: str) -> list[ToolCall]:
        body = text.strip().removeprefix(self.PREFIX).strip()
        if not body.startswith("{"):
            return []
        return [_call_from_json(body, text, ("parameters", "arguments"))]

    def format(self, call: ToolCall) -> str:
        return json.dumps({"name": call.name, "parameters": call.arguments})

    def describe(self, tools: Sequence[dict[str, Any]]) -> str:
        return (
            "You may call tools. To call one, answer with JSON only, in the format "
            '{"name": <tool name>, "parameters": <JSON object>}. Their signatures:\n'
            f"{_schemas_json(tools)}"
        )


class CompactParser:
    """``name(value, key=value)``, one call per line: a short format for tiny models.

    A line that starts with ``identifier(`` is a call and must end with ``)``.
    Values are text: surrounding quotes are removed, nothing else is
    converted (the tool's schema converts ``"12"`` to ``12`` for an integer
    parameter). Quote a value to include ``,``, ``)``, ``=`` or spaces at
    its ends.

    Args:
        keywords: How :meth:`format` writes ``call.arguments``: ``key=value``
            (True), or positionally in the order given (False, the default and
            the shortest: build the arguments in the tool's parameter order).

    >>> call = CompactParser().parse("calculator(123*456)")[0]
    >>> call.name, call.args, call.error
    ('calculator', ('123*456',), None)
    >>> call = CompactParser().parse("lookup(kiwi, sep=', ')")[0]
    >>> call.args, call.arguments
    (('kiwi',), {'sep': ', '})
    >>> CompactParser().parse("calculator(12*")[0].error
    "the call is not closed by ')'"
    """

    _LINE = re.compile(r"^\s*([A-Za-z_][\w.-]*)\((.*)$")
    _KEYWORD = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(?!=)(.*)$", re.DOTALL)

    def __init__(self, *, keywords: bool = False) -> None:
        self.keywords = keywords

    def parse(self, text: str) -> list[ToolCall]:
        calls = []
        for line in text.splitlines():
            match = self._LINE.match(line)
            if match is None:
                continue
            name, rest = match.group(1), match.group(2).rstrip()
            if not rest.endswith(")"):
                calls.append(ToolCall(name=name, error="the call is not closed by ')'", text=line))
                continue
            args, kwargs, error = self._arguments(rest[:-1])
            calls.append(
                ToolCall(name=name, arguments=kwargs, args=tuple(args), error=error, text=line)
            )
        return calls

    def _arguments(self, inner: str) -> tuple[list[str], dict[str, str], str | None]:
        args: list[str] = []
        kwargs: dict[str, str] = {}
        if not inner.strip():
            return args, kwargs, None
        for piece in _split_top_level(inner):
            keyword = self._KEYWORD.match(piece) if not _quoted(piece.strip()) else None
            if keyword is None:
                if kwargs:
                    return args, kwargs, "a positional value follows a key=value argument"
                args.append(_unquote(piece))
            elif keyword.group(1) in kwargs:
                return args, kwargs, f"argument {keyword.group(1)!r} is given twice"
            else:
                kwargs[keyword.group(1)] = _unquote(keyword.group(2))
        return args, kwargs, None

    def format(self, call: ToolCall) -> str:
        values = [_compact_value(v) for v in call.args]
        for key, value in call.arguments.items():
            values.append(
                f"{key}={_compact_value(value)}" if self.keywords else _compact_value(value)
            )
        return f"{call.name}({', '.join(values)})"

    def describe(self, tools: Sequence[dict[str, Any]]) -> str:
        lines = ["Tools:"]
        for schema in tools:
            fn = schema.get("function", schema)
            params = ", ".join(fn.get("parameters", {}).get("properties", {}))
            lines.append(f"{fn['name']}({params}): {fn.get('description', '')}")
        lines.append("Call a tool by writing name(value, ...) on its own line.")
        return "\n".join(lines)


def _split_top_level(inner: str) -> list[str]:
    """Split on commas outside quotes and brackets."""
    pieces, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(inner):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(inner[start:i])
            start = i + 1
    pieces.append(inner[start:])
    return pieces


def _quoted(text: str) -> bool:
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if _quoted(text) else text


def _compact_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    if text != text.strip() or any(ch in text for ch in ",()=\"'") or not text:
        return json.dumps(text)
    return text


# How chat templates declare their format, most specific first.
_TEMPLATE_MARKERS: tuple[tuple[str, type], ...] = (
    ("<tool_call>", HermesParser),
    ('"parameters": dictionary of argument name', JsonParser),
)


def parser_for_template(chat_template: str | None) -> ToolCallParser:
    """The parser for the tool-call format a chat template declares.

    Recognized: Hermes/Qwen (``<tool_call>``) and Llama 3.1+ (JSON with
    ``"parameters"``). Templates that declare no format, like the embedded
    tiny model's, get the default, :class:`HermesParser`.

    >>> type(parser_for_template("{{ messages }}")).__name__
    'HermesParser'
    """
    for marker, parser in _TEMPLATE_MARKERS:
        if chat_template and marker in chat_template:
            return parser()
    return HermesParser()
