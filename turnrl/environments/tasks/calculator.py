"""Calculator: 3-digit multiplication that only the tool can get right.

The agent is asked ``What is 123*456?``. The embedded character-level model
cannot multiply 3-digit numbers (a guess of the right magnitude is correct
about one time in a hundred thousand), but it can copy: call
``calculator(123*456)``, read ``56088`` in the tool message, answer ``56088``.
Using the tool is therefore the only way to earn the reward, which makes the
task a clean check that RL teaches tool use: the reward and the fraction of
episodes that call the tool rise together.

Choices, and why:

* The environment is a plain :class:`~turnrl.environments.tool_env.ToolEnvironment`
  built by :func:`calculator_env`; this module adds the tool, the scenarios
  and the demonstrations, nothing else.
* Operands run from 317 to 999 by default, so every product has 6 digits:
  the answer is then a fixed-width copy of the tool result, which the tiny
  model learns in a few hundred warm-start steps (with 5- and 6-digit
  results mixed it needs several times more). The model still cannot
  compute the product.
* :func:`calculator` evaluates ``+ - * / // %`` and parentheses on numbers
  with :mod:`ast`, never ``eval``: the expression is model output.
* :func:`demonstrations` can mix in direct answers (``tool_fraction < 1``):
  a warm-started model then calls the tool only part of the time, and RL has
  to discover that calling is what pays. With ``tool_fraction=1`` a warm
  start alone teaches the habit.
* Demonstrations open with ``env.opening(scenario)``, so they show exactly
  the prompt (with or without a tool description) that rollouts will show.
"""

from __future__ import annotations

import ast
import operator
import random
from collections.abc import Sequence
from typing import Any

from turnrl.environments.tool_env import ToolEnvironment
from turnrl.tools.calls import ToolCall
from turnrl.types import Message, Scenario, assistant, user

_OPERATORS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
MAX_EXPRESSION_CHARS = 200


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"unsupported expression element: {ast.dump(node)[:40]}")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: Numbers with + - * / // % and parentheses, like 123*456.

    >>> calculator("123*456"), calculator("(7 - 1) / 4")
    ('56088', '1.5')
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from e
    value = _evaluate(tree.body)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def question_text(a: int, b: int) -> str:
    """The question for ``a * b``.

    >>> question_text(123, 456)
    'What is 123*456?'
    """
    return f"What is {a}*{b}?"


def make_scenarios(
    n: int = 200, *, low: int = 317, high: int = 999, seed: int = 0
) -> list[Scenario]:
    """``n`` distinct questions ``a*b`` with ``a, b`` in ``[low, high]``.

    Args:
        n: How many.
        low: Smallest operand (317: every product has 6 digits).
        high: Largest operand (inclusive).
        seed: Seed of the draw (``random.Random(seed)``).

    Returns:
        Scenarios with ids like ``mul-123-456``, ``data`` holding ``a``, ``b``,
        ``expression`` and ``answer``.

    Raises:
        ValueError: ``low > high`` or more questions asked than exist.

    >>> [s.id for s in make_scenarios(2, seed=0)]
    ['mul-965-453', 'mul-612-811']
    """
    if low > high:
        raise ValueError(f"low must be <= high, got [{low}, {high}]")
    size = high - low + 1
    if not 0 <= n <= size * size:
        raise ValueError(f"n must be in [0, {size * size}] for operands in [{low}, {high}]")
    rng = random.Random(seed)
    pairs = rng.sample(range(size * size), n)
    scenarios = []
    for index in pairs:
        a, b = low + index // size, low + index % size
        scenarios.append(
            Scenario(
                id=f"mul-{a}-{b}",
                prompt=[user(question_text(a, b))],
                data={"a": a, "b": b, "expression": f"{a}*{b}", "answer": a * b},
            )
        )
    return scenarios


def calculator_env(scenarios: Sequence[Scenario], **kwargs: Any) -> ToolEnvironment:
    """A :class:`ToolEnvironment` over ``scenarios`` with the :func:`calculator` tool.

    Args:
        scenarios: From :func:`make_scenarios`.
        **kwargs: Passed to :class:`ToolEnvironment` (``parser``,
            ``describe_tools``, ``max_tool_calls``, ...).
    """
    kwargs.setdefault("max_tool_calls", 2)
    return ToolEnvironment(scenarios, [calculator], **kwargs)


def demonstration(
    env: ToolEnvironment, scenario: Scenario, *, use_tool: bool = True
) -> list[Message]:
    """One solved episode: call the calculator, read the result, answer.

    Args:
        env: The environment the demonstration is for (its opening and call
            format are used).
        scenario: The question.
        use_tool: False gives a direct answer instead, with no tool call.

    >>> from turnrl.tools.calls import CompactParser
    >>> env = calculator_env([], parser=CompactParser())
    >>> s = make_scenarios(1, seed=0)[0]
    >>> [(m.role, m.content) for m in demonstration(env, s)]
    [('user', 'What is 965*453?'), ('assistant', 'calculator(965*453)'), ('tool', '437145'), ('assistant', '437145')]
    """  # noqa: E501
    answer = str(scenario.data["answer"])
    if not use_tool:
        return [*env.opening(scenario), assistant(answer)]
    call = ToolCall(name="calculator", arguments={"expression": scenario.data["expression"]})
    return [
        *env.opening(scenario),
        assistant(env.parser.format(call)),
        Message(role="tool", content=calculator(scenario.data["expression"])),
        assistant(answer),
    ]


def demonstrations(
    env: ToolEnvironment,
    scenarios: Sequence[Scenario],
    *,
    tool_fraction: float = 1.0,
    seed: int = 0,
) -> list[list[Message]]:
    """Warm-start conversations; ``tool_fraction`` of them use the tool.

    The others answer directly with the right number, which the model cannot
    compute: it learns the answer's format, not the answer, so it starts RL
    calling the tool in about ``tool_fraction`` of its episodes.

    >>> env = calculator_env([])
    >>> convs = demonstrations(env, make_scenarios(10), tool_fraction=0.0)
    >>> {len(c) for c in convs}
    {2}
    """
    if not 0 <= tool_fraction <= 1:
        raise ValueError(f"tool_fraction must be in [0, 1], got {tool_fraction}")
    rng = random.Random(seed)
    return [demonstration(env, s, use_tool=rng.random() < tool_fraction) for s in scenarios]
