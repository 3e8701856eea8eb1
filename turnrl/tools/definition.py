"""Tools: plain Python functions an agent can call, with a derived JSON schema.

A tool is a function (sync or async) with type hints and a Google-style
docstring. Its JSON schema is derived by ``transformers.utils.get_json_schema``,
exactly as transformers does for ``apply_chat_template(..., tools=[fn])``, so
the schema the model sees is the one a user of transformers would get::

    @tool
    def calculator(expression: str) -> str:
        '''Evaluate an arithmetic expression.

        Args:
            expression: The expression, like 123*456.
        '''
        ...

    calculator.schema  # {"type": "function", "function": {"name": "calculator", ...}}

:func:`execute` runs one :class:`~turnrl.tools.calls.ToolCall` and never
raises for the call's own faults: a malformed call, an unknown tool, bad
arguments, a tool that raises and a tool that runs past its time limit all
become an error text (``"Error: ..."``) for the agent to read, with
``ok=False`` so the environment can count it.

Choices, and why:

* Arguments are checked against the schema before the call (required,
  unknown, basic JSON types, enums), so the agent reads "missing required
  argument 'expression'" instead of a Python ``TypeError`` trace. A string is
  converted to an integer, number or boolean when the schema asks for one and
  it parses exactly (``"12"`` -> ``12``), as pydantic's lax mode does: small
  models and the compact call format write values as text.
* Sync tools run in a worker thread, so a slow tool never blocks the event
  loop (other episodes keep generating). The time limit cancels an async tool
  at its next ``await``; a sync tool's thread cannot be killed, so the episode
  stops waiting for it (``abandon_on_cancel``) and the thread finishes in the
  background.
* Results are sent back as text: strings as they are, other values as JSON
  (``str()`` when they are not JSON-serializable), cut to ``max_chars``.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

import anyio
from transformers.utils import get_json_schema

from turnrl.tools.calls import ToolCall

__all__ = [
    "Tool",
    "ToolArgumentError",
    "ToolOutcome",
    "ToolSchemaError",
    "execute",
    "format_result",
    "tool",
    "tool_schemas",
    "validate_arguments",
]


class ToolSchemaError(ValueError):
    """A function cannot be a tool: its JSON schema cannot be derived."""


class ToolArgumentError(ValueError):
    """A call's arguments do not match the tool's schema."""


@dataclass(frozen=True, eq=False)
class Tool:
    """A function an agent can call, with its JSON schema.

    Build one with :func:`tool`. Calling a ``Tool`` calls the function, so a
    decorated function still works as a function; :func:`execute` is the
    validated, time-limited path the environment uses.

    Attributes:
        fn: The function (sync or async).
        schema: ``{"type": "function", "function": {"name", "description",
            "parameters"}}``, the form chat templates take in ``tools=``.
    """

    fn: Callable[..., Any]
    schema: dict[str, Any]

    @property
    def name(self) -> str:
        """The name the agent calls the tool by."""
        return self.schema["function"]["name"]

    @property
    def description(self) -> str:
        """What the tool does (the docstring's first paragraph)."""
        return self.schema["function"].get("description", "")

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments (``{"type": "object", "properties", "required"}``)."""
        return self.schema["function"].get("parameters", {"type": "object", "properties": {}})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    async def run(self, arguments: Mapping[str, Any]) -> Any:
        """Call the function with validated ``arguments`` (sync ones in a worker thread)."""
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**arguments)
        call = functools.partial(self.fn, **arguments)
        result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        if inspect.isawaitable(result):  # a sync wrapper around a coroutine
            result = await result
        return result


@overload
def tool(fn: Callable[..., Any], *, name: str | None = None) -> Tool: ...
@overload
def tool(fn: None = None, *, name: str | None = None) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a :class:`Tool` of a typed, documented function; usable as ``@tool``.

    Args:
        fn: The function. Every argument needs a type hint, and the docstring
            a description and an ``Args:`` entry per argument (Google style).
        name: The name the agent uses (default: the function's name).

    Raises:
        ToolSchemaError: The schema cannot be derived; the message names the
            function and what is missing.
    """
    if fn is None:
        return functools.partial(tool, name=name)  # type: ignore[return-value]
    if isinstance(fn, Tool):
        return fn if name is None else Tool(fn.fn, _renamed(fn.schema, name))
    label = getattr(fn, "__qualname__", repr(fn))
    try:
        schema = get_json_schema(fn)
    except Exception as e:  # transformers raises plain Exception subclasses
        raise ToolSchemaError(
            f"cannot make a tool of {label}: {e}. A tool needs a type hint on every argument "
            "and a Google-style docstring: a description, then an 'Args:' section with one "
            "'name: description' line per argument"
        ) from e
    return Tool(fn, _renamed(schema, name) if name else schema)


def tool_schemas(tools: Sequence[Tool | dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """JSON schemas of ``tools`` (Tool objects or schemas already), or None if there are none."""
    if not tools:
        return None
    return [t if isinstance(t, dict) else t.schema for t in tools]


def _renamed(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return {**schema, "function": {**schema["function"], "name": name}}


# JSON schema type name -> check of a Python value (bool is not an integer here).
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list | tuple),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _from_text(value: str, kind: str) -> Any:
    """``value`` converted to JSON type ``kind`` if it parses exactly, else ``None``."""
    text = value.strip()
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return None
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return None


def _check_value(value: Any, spec: dict[str, Any], path: str) -> Any:
    """``value`` (converted if lax rules allow) or a ToolArgumentError."""
    kinds = spec.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if spec.get("nullable"):
        kinds.append("null")
    if kinds and not any(_TYPES.get(k, lambda _: True)(value) for k in kinds):
        converted = None
        if isinstance(value, str):
            converted = next(
                (c for c in (_from_text(value, k) for k in kinds) if c is not None), None
            )
        if converted is None:
            raise ToolArgumentError(
                f"argument {path!r} must be {' or '.join(kinds)}, got {json.dumps(value)}"
            )
        value = converted
    if "enum" in spec and value not in spec["enum"]:
        raise ToolArgumentError(f"argument {path!r} must be one of {spec['enum']}, got {value!r}")
    if "items" in spec and isinstance(value, list | tuple):
        value = [_check_value(v, spec["items"], f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def validate_arguments(tool: Tool, call: ToolCall) -> dict[str, Any]:
    """The call's arguments bound to ``tool``'s parameters and checked against its schema.

    Returns:
        Keyword arguments for the function.

    Raises:
        ToolArgumentError: Too many positional values, a value given twice, an
            unknown or missing argument, or a value of the wrong type.
    """
    properties: dict[str, Any] = tool.parameters.get("properties", {})
    names = list(properties)
    if len(call.args) > len(names):
        raise ToolArgumentError(
            f"{tool.name} takes {len(names)} argument(s) ({', '.join(names) or 'none'}), "
            f"got {len(call.args)} positional value(s)"
        )
    bound = dict(zip(names, call.args, strict=False))
    for key, value in call.arguments.items():
        if key in bound:
            raise ToolArgumentError(f"argument {key!r} is given twice")
        bound[key] = value
    unknown = [k for k in bound if k not in properties]
    if unknown:
        raise ToolArgumentError(
            f"unknown argument(s) {', '.join(map(repr, unknown))} for {tool.name}; "
            f"it takes: {', '.join(names) or 'no arguments'}"
        )
    missing = [k for k in tool.parameters.get("required", []) if k not in bound]
    if missing:
        raise ToolArgumentError(
            f"missing required argument(s) {', '.join(map(repr, missing))} for {tool.name}"
        )
    return {k: _check_value(v, properties[k], k) for k, v in bound.items()}


class ToolOutcome(NamedTuple):
    """What one call produced.

    Attributes:
        call: The call.
        content: The text the agent reads in the ``tool`` message.
        ok: False when ``content`` is an error (malformed call, unknown tool,
            bad arguments, the tool raised or timed out).
    """

    call: ToolCall
    content: str
    ok: bool


def format_result(result: Any, max_chars: int | None = None) -> str:
    """A tool's return value as the text of a ``tool`` message.

    >>> format_result("56088"), format_result({"a": 1}), format_result("x" * 9, max_chars=4)
    ('56088', '{"a": 1}', 'xxxx... [5 more characters]')
    """
    if isinstance(result, str):
        text = result
    else:
        try:
            text = json.dumps(result)
        except (TypeError, ValueError):
            text = str(result)
    if max_chars is not None and len(text) > max_chars:
        text = f"{text[:max_chars]}... [{len(text) - max_chars} more characters]"
    return text


async def execute(
    call: ToolCall,
    tools: Mapping[str, Tool],
    *,
    timeout_s: float | None = 10.0,
    max_chars: int | None = 2000,
) -> ToolOutcome:
    """Run ``call`` against ``tools``; every failure of the call becomes an error text.

    Args:
        call: A parsed call (possibly malformed).
        tools: The available tools, by name.
        timeout_s: Time limit of the tool's run (``None``: no limit).
        max_chars: Longest result text (``None``: no limit).

    Returns:
        The outcome; ``ok`` is False and ``content`` starts with ``Error:``
        when the call failed.
    """
    if call.error is not None:
        return ToolOutcome(call, f"Error: malformed tool call: {call.error}", False)
    chosen = tools.get(call.name)
    if chosen is None:
        available = ", ".join(sorted(tools)) or "none"
        return ToolOutcome(
            call, f"Error: unknown tool {call.name!r}; available tools: {available}", False
        )
    try:
        arguments = validate_arguments(chosen, call)
    except ToolArgumentError as e:
        return ToolOutcome(call, f"Error: {e}", False)
    try:
        with anyio.fail_after(timeout_s) as scope:
            result = await chosen.run(arguments)
    except TimeoutError as e:
        if not scope.cancelled_caught:  # the tool's own TimeoutError: an ordinary failure
            return ToolOutcome(call, f"Error: {call.name} raised TimeoutError: {e}", False)
        return ToolOutcome(call, f"Error: {call.name} did not finish within {timeout_s:g} s", False)
    except Exception as e:  # the tool's own failure is the agent's to read, never a crash
        return ToolOutcome(call, f"Error: {call.name} raised {type(e).__name__}: {e}", False)
    return ToolOutcome(call, format_result(result, max_chars), True)
