"""Tools: schema derivation, argument checks, call parsing and execution."""

import doctest
import importlib
import time

import anyio
import pytest

from turnrl.tools import (
    Tool,
    ToolArgumentError,
    ToolSchemaError,
    execute,
    format_result,
    tool,
    validate_arguments,
)
from turnrl.tools.calls import (
    CompactParser,
    HermesParser,
    JsonParser,
    ToolCall,
    ToolCallParser,
    parser_for_template,
)


def convert(amount: float, currency: str = "EUR", round_to: int | None = None) -> str:
    """Convert an amount of dollars.

    Args:
        amount: Dollars to convert.
        currency: Target currency code.
        round_to: Decimals to round to.
    """
    return f"{amount} {currency}"


@tool
async def lookup(key: str) -> str:
    """Look up a secret code.

    Args:
        key: The name of the code.
    """
    await anyio.sleep(0)
    return {"kiwi": "4821"}[key]


# --- schema derivation -------------------------------------------------------------------


def test_schema_derived_from_hints_and_docstring():
    t = tool(convert)
    assert isinstance(t, Tool) and t.name == "convert"
    assert t.description == "Convert an amount of dollars."
    params = t.parameters
    assert params["type"] == "object"
    assert params["properties"]["amount"] == {
        "type": "number",
        "description": "Dollars to convert.",
    }
    assert params["properties"]["currency"]["type"] == "string"
    assert params["properties"]["round_to"] == {
        "type": "integer",
        "nullable": True,
        "description": "Decimals to round to.",
    }
    assert params["required"] == ["amount"]  # defaulted arguments are optional
    assert t.schema["type"] == "function" and t.schema["function"]["name"] == "convert"
    assert t(2.0) == "2.0 EUR"  # a Tool still calls like its function


def test_decorator_forms_and_rename():
    assert lookup.name == "lookup" and isinstance(lookup, Tool)
    renamed = tool(name="fx")(convert)
    assert renamed.name == "fx" and renamed.fn is convert
    assert tool(renamed, name="fx2").name == "fx2"


def test_missing_docstring_or_hints_is_a_clear_error():
    def no_doc(a: int) -> int:
        return a

    def no_hint(a):
        """Do a thing.

        Args:
            a: A thing.
        """

    def no_args_section(a: int) -> int:
        """Do a thing."""

    with pytest.raises(ToolSchemaError, match=r"no_doc.*docstring.*Args:"):
        tool(no_doc)
    with pytest.raises(ToolSchemaError, match=r"no_hint.*type hint"):
        tool(no_hint)
    with pytest.raises(ToolSchemaError, match=r"no_args_section.*'a'"):
        tool(no_args_section)


# --- argument validation -----------------------------------------------------------------


def test_arguments_checked_bound_and_converted():
    t = tool(convert)
    call = ToolCall("convert", {"amount": 3, "round_to": None})
    assert validate_arguments(t, call) == {"amount": 3, "round_to": None}
    # Positional values bind in declaration order; text converts when it parses exactly.
    call = ToolCall("convert", {"round_to": "2"}, args=("1.5", "USD"))
    assert validate_arguments(t, call) == {"amount": 1.5, "currency": "USD", "round_to": 2}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (ToolCall("convert", {}), r"missing required argument\(s\) 'amount'"),
        (ToolCall("convert", {"amount": 1, "colour": "red"}), r"unknown argument\(s\) 'colour'"),
        (ToolCall("convert", {"amount": "lots"}), r"'amount' must be number, got \"lots\""),
        (ToolCall("convert", {"amount": True}), r"'amount' must be number, got true"),
        (ToolCall("convert", {"amount": 1, "round_to": 1.5}), "must be integer or null"),
        (ToolCall("convert", args=(1, "EUR", 2, 3)), r"takes 3 argument\(s\).*got 4"),
        (ToolCall("convert", {"amount": 2}, args=(1,)), "'amount' is given twice"),
    ],
)
def test_bad_arguments_are_readable_errors(call, message):
    with pytest.raises(ToolArgumentError, match=message):
        validate_arguments(tool(convert), call)


def test_enum_and_array_items_checked():
    from typing import Literal

    def pick(mode: Literal["fast", "slow"], ids: list[int]) -> str:
        """Pick.

        Args:
            mode: How.
            ids: Which.
        """
        return mode

    t = tool(pick)
    assert validate_arguments(t, ToolCall("pick", {"mode": "fast", "ids": ["1", 2]})) == {
        "mode": "fast",
        "ids": [1, 2],
    }
    with pytest.raises(ToolArgumentError, match="one of"):
        validate_arguments(t, ToolCall("pick", {"mode": "medium", "ids": []}))
    with pytest.raises(ToolArgumentError, match=r"'ids\[1\]' must be integer"):
        validate_arguments(t, ToolCall("pick", {"mode": "fast", "ids": [1, "x"]}))


# --- parsing ------------------------------------------------------------------------------


def test_hermes_parses_calls_in_order_with_text_around():
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "lookup", "arguments": {"key": "kiwi"}}\n</tool_call>\n'
        '<tool_call>{"name": "convert", "arguments": "{\\"amount\\": 2}"}</tool_call>'
    )
    calls = HermesParser().parse(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("lookup", {"key": "kiwi"}, None),
        ("convert", {"amount": 2}, None),  # arguments given as a JSON string
    ]
    assert calls[0].text.startswith("<tool_call>") and calls[0].text.endswith("</tool_call>")
    assert HermesParser().parse("The answer is 42.") == []  # no call: a final answer


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('<tool_call>{"name": "lookup", "arguments": {</tool_call>', "not valid JSON"),
        ("<tool_call>[1, 2]</tool_call>", "expected a JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'no "name"'),
        ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "f", "arguments": "{x"}</tool_call>', "not a JSON object"),
        ('<tool_call>{"name": "lookup", "arguments": {"key": "ki', "never closed"),
    ],
)
def test_hermes_malformed_calls_come_back_with_an_error(text, error):
    (call,) = HermesParser().parse(text)
    assert call.error is not None and error in call.error


def test_hermes_format_round_trips():
    parser = HermesParser()
    call = ToolCall("lookup", {"key": "kiwi"})
    text = parser.format(call)
    assert text == '<tool_call>\n{"name": "lookup", "arguments": {"key": "kiwi"}}\n</tool_call>'
    (parsed,) = parser.parse(text)
    assert (parsed.name, parsed.arguments) == ("lookup", {"key": "kiwi"})
    assert '"name": "lookup"' in parser.describe([lookup.schema])


def test_json_parser_llama_style():
    parser = JsonParser()
    (call,) = parser.parse('<|python_tag|>{"name": "lookup", "parameters": {"key": "kiwi"}}')
    assert (call.name, call.arguments, call.error) == ("lookup", {"key": "kiwi"}, None)
    assert parser.parse("4821") == []
    assert "not valid JSON" in parser.parse('{"name": "lookup"')[0].error
    assert parser.parse(parser.format(call))[0].arguments == {"key": "kiwi"}


def test_compact_parser():
    parser = CompactParser()
    calls = parser.parse("calculator(123*456)\nconvert(2.5, currency='US, D')\n56088")
    assert [(c.name, c.args, c.arguments, c.error) for c in calls] == [
        ("calculator", ("123*456",), {}, None),
        ("convert", ("2.5",), {"currency": "US, D"}, None),
    ]
    assert parser.parse("56088") == [] and parser.parse("It is 7 (seven)") == []
    assert "not closed" in parser.parse("calculator(12*")[0].error
    assert "positional value follows" in parser.parse("f(a=1, 2)")[0].error
    # format: positional by default (shortest), key=value on request; both parse back.
    call = ToolCall("convert", {"amount": 2.5, "currency": "a,b"})
    assert parser.format(call) == 'convert(2.5, "a,b")'
    assert CompactParser(keywords=True).format(call) == 'convert(amount=2.5, currency="a,b")'
    (back,) = parser.parse(CompactParser(keywords=True).format(call))
    assert validate_arguments(tool(convert), back) == {"amount": 2.5, "currency": "a,b"}
    assert parser.describe([lookup.schema]).splitlines()[1] == "lookup(key): Look up a secret code."


def test_parsers_follow_the_protocol_and_template_detection():
    for parser in (HermesParser(), JsonParser(), CompactParser()):
        assert isinstance(parser, ToolCallParser)
    qwen = '{{- \'<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\' }}'
    llama = (
        'Respond in the format {"name": function name, "parameters": dictionary of argument name'
    )
    from turnrl.agents.tiny import CHAT_TEMPLATE

    assert isinstance(parser_for_template(qwen), HermesParser)
    assert isinstance(parser_for_template(llama), JsonParser)
    assert isinstance(parser_for_template(CHAT_TEMPLATE), HermesParser)  # the documented default
    assert isinstance(parser_for_template(None), HermesParser)


# --- execution ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sync_and_async_tools_run():
    tools = {"lookup": lookup, "convert": tool(convert)}
    outcome = await execute(ToolCall("lookup", {"key": "kiwi"}), tools)
    assert outcome.ok and outcome.content == "4821"
    outcome = await execute(ToolCall("convert", {"amount": "3"}), tools)
    assert outcome.ok and outcome.content == "3.0 EUR"


@pytest.mark.anyio
async def test_failures_become_error_texts():
    tools = {"lookup": lookup}
    cases = [
        (ToolCall("", error="not valid JSON"), "Error: malformed tool call: not valid JSON"),
        (ToolCall("search", {}), "Error: unknown tool 'search'; available tools: lookup"),
        (ToolCall("lookup", {}), "Error: missing required argument(s) 'key' for lookup"),
        (ToolCall("lookup", {"key": "fig"}), "Error: lookup raised KeyError: 'fig'"),
    ]
    for call, expected in cases:
        outcome = await execute(call, tools)
        assert not outcome.ok and outcome.content == expected


@pytest.mark.anyio
async def test_timeouts_async_and_sync():
    @tool
    async def slow_async(seconds: float) -> str:
        """Sleep.

        Args:
            seconds: How long.
        """
        await anyio.sleep(seconds)
        return "done"

    @tool
    def slow_sync(seconds: float) -> str:
        """Sleep in a thread.

        Args:
            seconds: How long.
        """
        time.sleep(seconds)
        return "done"

    tools = {"slow_async": slow_async, "slow_sync": slow_sync}
    for name in tools:
        started = time.perf_counter()
        outcome = await execute(ToolCall(name, {"seconds": 2.0}), tools, timeout_s=0.2)
        assert time.perf_counter() - started < 1.5  # the episode stops waiting
        assert not outcome.ok and outcome.content == f"Error: {name} did not finish within 0.2 s"
        fast = await execute(ToolCall(name, {"seconds": 0.0}), tools, timeout_s=0.2)
        assert fast.ok and fast.content == "done"


@pytest.mark.anyio
async def test_a_tools_own_timeout_error_is_not_a_timeout():
    @tool
    def flaky() -> str:
        """Fail."""
        raise TimeoutError("upstream")

    outcome = await execute(ToolCall("flaky"), {"flaky": flaky}, timeout_s=5)
    assert outcome.content == "Error: flaky raised TimeoutError: upstream"


def test_format_result():
    assert format_result(7) == "7" and format_result(None) == "null"
    assert format_result({1, 2}).startswith("{")  # not JSON: str()
    assert format_result("abcdef", max_chars=3) == "abc... [3 more characters]"


@pytest.mark.parametrize(
    "module",
    ["turnrl.tools.calls", "turnrl.tools.definition", "turnrl.environments.tool_env"],
)
def test_doctests(module):
    results = doctest.testmod(importlib.import_module(module))
    assert results.failed == 0 and results.attempted > 0
