"""ToolEnvironment: the agent calls tools until it gives a final answer.

One episode::

    user:      What is 123*456?
    assistant: <tool_call>{"name": "calculator", "arguments": {"expression": "123*456"}}</tool_call>
    tool:      56088
    assistant: 56088                      <- no tool call: the final answer, scored

Each assistant message is parsed with the environment's
:class:`~turnrl.tools.calls.ToolCallParser`. If it holds tool calls, each is
executed (:func:`turnrl.tools.execute`, with a time limit) and answered with
one ``tool`` message, in order; the episode goes on with reward 0. If it holds
none, it is the final answer: ``score(answer, scenario)`` is the reward and
the episode terminates.

Choices, and why:

* A malformed call, an unknown tool, bad arguments, a tool that raises or
  times out: each becomes a ``tool`` message starting with ``Error:`` that the
  agent reads and can recover from. None of them ends the episode or raises;
  each is counted in ``info["tool_errors"]`` (and so in
  ``rollout/tool_errors``). ``info["tool_calls"]`` counts every call attempt
  of the step, well-formed or not.
* ``max_tool_calls`` bounds the calls of an episode. Calls past it are not
  run: they are answered with an error and the episode is *truncated* (a
  limit, not the task's end, as ``TurnLimit`` does), so an agent that never
  stops calling cannot loop forever.
* The tools are offered through ``self.tools``; the rollout passes their
  schemas to ``agent.respond(..., tools=...)``, which renders them with the
  chat template. For templates that ignore ``tools`` (check
  ``agent.renders_tools``), ``describe_tools=True`` prepends a system message
  written by the parser (its ``describe``), listing the tools and the format.
* Tool results are ``tool`` messages, part of the environment's observation,
  so they are never in the loss; the assistant's call tokens are.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from turnrl.environments.base import Environment, StepResult, scenario_from_options
from turnrl.tools import Tool, ToolCall, ToolOutcome, execute, tool
from turnrl.tools.calls import HermesParser, ToolCallParser
from turnrl.types import Message, Scenario

ScoreFn = Callable[[str, Scenario], float | Awaitable[float]]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def exact_answer(response: str, scenario: Scenario) -> float:
    """1.0 if ``response`` gives ``scenario.data["answer"]``, else 0.0.

    A numeric answer is compared with the first number in the response; any
    other answer with the whole response, ignoring case, surrounding space
    and a final period.

    >>> s = Scenario(id="q", data={"answer": 56088})
    >>> exact_answer("56088", s), exact_answer("It is 56088.", s), exact_answer("5608", s)
    (1.0, 1.0, 0.0)
    >>> exact_answer(" Paris. ", Scenario(id="c", data={"answer": "paris"}))
    1.0
    """
    if "answer" not in scenario.data:
        raise ValueError(f"scenario {scenario.id!r} has no data['answer'] to score against")
    answer = scenario.data["answer"]
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        match = _NUMBER.search(response)
        return float(match is not None and float(match.group()) == float(answer))
    return float(response.strip().rstrip(".").casefold() == str(answer).strip().casefold())


class ToolEnvironment(Environment):
    """Scenarios answered with the help of tools; the final answer is scored.

    Args:
        scenarios: The tasks; each one's ``prompt`` opens the episode, and
            ``data`` holds what ``score`` needs (``data["answer"]`` for the
            default).
        tools: The tools, as :class:`~turnrl.tools.Tool` objects or typed,
            documented functions (made into tools with :func:`~turnrl.tools.tool`).
        score: ``score(final_answer, scenario) -> reward`` (sync or async);
            default :func:`exact_answer`.
        parser: The tool-call format (default :class:`~turnrl.tools.calls.HermesParser`;
            :func:`~turnrl.tools.calls.parser_for_template` picks the one a
            chat template declares).
        max_tool_calls: Tool calls allowed per episode (>= 0).
        tool_timeout_s: Time limit of each call (``None``: none).
        describe_tools: Prepend a system message describing the tools and the
            call format (for chat templates that ignore ``tools=``).
        max_result_chars: Longest tool result text (``None``: no limit).

    Raises:
        ValueError: Two tools share a name, or ``max_tool_calls`` < 0.
        turnrl.tools.ToolSchemaError: A function cannot be made a tool.
    """

    def __init__(
        self,
        scenarios: Sequence[Scenario],
        tools: Sequence[Tool | Callable[..., Any]],
        *,
        score: ScoreFn = exact_answer,
        parser: ToolCallParser | None = None,
        max_tool_calls: int = 4,
        tool_timeout_s: float | None = 10.0,
        describe_tools: bool = False,
        max_result_chars: int | None = 2000,
    ) -> None:
        if isinstance(max_tool_calls, bool) or not isinstance(max_tool_calls, int):
            raise ValueError(f"max_tool_calls must be an integer >= 0, got {max_tool_calls!r}")
        if max_tool_calls < 0:
            raise ValueError(f"max_tool_calls must be >= 0, got {max_tool_calls}")
        self.scenarios = tuple(scenarios)
        self.tools = [t if isinstance(t, Tool) else tool(t) for t in tools]
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be distinct, got {names}")
        self.score = score
        self.parser = parser or HermesParser()
        self.max_tool_calls = max_tool_calls
        self.tool_timeout_s = tool_timeout_s
        self.describe_tools = describe_tools
        self.max_result_chars = max_result_chars
        self._scenario: Scenario | None = None
        self._calls = 0
        self._done = False

    def clone(self) -> ToolEnvironment:
        # Tools, parser and score are shared (a tool may hold a client); episode state is not.
        new = ToolEnvironment.__new__(ToolEnvironment)
        new.__dict__.update(self.__dict__)
        new._scenario, new._calls, new._done = None, 0, False
        return new

    @property
    def tool_schemas(self) -> list[dict[str, Any]]:
        """The tools' JSON schemas, as passed to a chat template's ``tools=``."""
        return [t.schema for t in self.tools]

    def opening(self, scenario: Scenario) -> list[Message]:
        """The messages ``reset`` opens ``scenario`` with (for demonstrations too)."""
        prompt = list(scenario.prompt)
        if not prompt:
            raise ValueError(f"scenario {scenario.id!r} has no prompt to open the episode with")
        if not self.describe_tools:
            return prompt
        description = self.parser.describe(self.tool_schemas)
        if prompt[0].role == "system":  # one system message, as most templates require
            merged = f"{prompt[0].content}\n\n{description}"
            return [Message(role="system", content=merged), *prompt[1:]]
        return [Message(role="system", content=description), *prompt]

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        scenario = scenario_from_options(options)
        self._scenario, self._calls, self._done = scenario, 0, False
        return self.opening(scenario), {"scenario_id": scenario.id}

    async def step(self, message: Message) -> StepResult:
        if self._scenario is None:
            raise RuntimeError("ToolEnvironment.step() called before reset()")
        if self._done:
            raise RuntimeError("ToolEnvironment.step() called after the episode ended")
        calls = self.parser.parse(message.content)
        if not calls:
            return await self._final(message.content)
        outcomes = [await self._run(call) for call in calls]
        errors = sum(not o.ok for o in outcomes)
        over_limit = self._calls > self.max_tool_calls
        info: dict[str, Any] = {"tool_calls": len(calls), "tool_errors": errors}
        if over_limit:
            info["tool_limit"] = True
            self._done = True
        observation = [Message(role="tool", content=o.content) for o in outcomes]
        return StepResult(observation, 0.0, False, over_limit, info)

    async def _run(self, call: ToolCall) -> ToolOutcome:
        self._calls += 1
        if self._calls > self.max_tool_calls:
            text = f"Error: no tool calls left ({self.max_tool_calls} per episode); answer now"
            return ToolOutcome(call, text, False)
        by_name = {t.name: t for t in self.tools}
        return await execute(
            call, by_name, timeout_s=self.tool_timeout_s, max_chars=self.max_result_chars
        )

    async def _final(self, answer: str) -> StepResult:
        assert self._scenario is not None
        reward = self.score(answer, self._scenario)
        if inspect.isawaitable(reward):
            reward = await reward
        self._done = True
        info = {"tool_calls": 0, "tool_errors": 0}
        return StepResult([], float(reward), True, False, info)

    def __repr__(self) -> str:
        return f"<ToolEnvironment tools={[t.name for t in self.tools]}>"
