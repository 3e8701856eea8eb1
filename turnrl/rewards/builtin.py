"""Built-in reward functions: correctness, format and length.

Each is a factory returning a per-trajectory :class:`RewardFunction` made with
``reward_function``; its ``.fn`` scores one trajectory directly, as the
examples show. Names default to the factory's name and can be changed with
``name=`` (two instances in one ``combine`` need different names).

Correctness rewards read the expected value from ``scenario.data[key]``; a
scenario without that key is an error for the trajectory (it is a bug in the
task, not a wrong answer), so the trajectory is dropped rather than taught
that it was wrong.
"""

from __future__ import annotations

import math
import re
from typing import Any

from turnrl.rewards.base import TrajectoryReward, reward_function
from turnrl.types import Trajectory

# Optional sign, then digits with an optional decimal part (or a bare
# fraction such as ".5"), then an optional exponent.
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def _expected(trajectory: Trajectory, key: str) -> Any:
    try:
        return trajectory.scenario.data[key]
    except KeyError:
        # LookupError rather than KeyError: KeyError's message would be quoted.
        raise LookupError(f"scenario {trajectory.scenario.id!r} has no data[{key!r}]") from None


def exact_match(
    key: str = "answer",
    *,
    strip: bool = True,
    case_sensitive: bool = True,
    name: str = "exact_match",
) -> TrajectoryReward:
    """1.0 if the final assistant response equals ``str(scenario.data[key])``, else 0.0.

    Args:
        key: Where the expected answer is in ``scenario.data``.
        strip: Strip surrounding whitespace from both sides before comparing.
        case_sensitive: Compare case-sensitively; if False, compare casefolded.
        name: The reward's name.

    Returns:
        The reward function. A missing ``key`` is an error naming the key.

    Examples:
        >>> from turnrl.types import Scenario, Trajectory, Turn, assistant
        >>> t = Trajectory(scenario=Scenario(id="q", data={"answer": "Paris"}), turns=[
        ...     Turn(message=assistant(" paris "), prompt_ids=[], completion_ids=[])])
        >>> exact_match().fn(t)
        0.0
        >>> exact_match(case_sensitive=False).fn(t)
        1.0
        >>> exact_match(key="city").fn(t)
        Traceback (most recent call last):
        ...
        LookupError: scenario 'q' has no data['city']
    """

    def normalize(text: str) -> str:
        text = text.strip() if strip else text
        return text if case_sensitive else text.casefold()

    def score(trajectory: Trajectory) -> float:
        expected = str(_expected(trajectory, key))
        return float(normalize(trajectory.final_response) == normalize(expected))

    return reward_function(score, name=name)


def parse_number(text: str) -> float | None:
    """The first number in ``text`` (int or float, optional sign), or None.

    Thousands separators are not understood: ``"1,000"`` parses as 1.

    Examples:
        >>> parse_number("x = -3.5, then 4"), parse_number("1e3"), parse_number("none")
        (-3.5, 1000.0, None)
    """
    match = _NUMBER.search(text)
    return float(match.group()) if match else None


def numeric_match(
    key: str = "answer", *, tol: float = 1e-6, name: str = "numeric_match"
) -> TrajectoryReward:
    """1.0 if the first number in the final response is within ``tol`` of the answer.

    The number is parsed with :func:`parse_number`; the expected value is
    ``float(scenario.data[key])``. A response without a number scores 0.0.

    Args:
        key: Where the expected number is in ``scenario.data``.
        tol: Absolute tolerance: ``abs(parsed - expected) <= tol``.
        name: The reward's name.

    Returns:
        The reward function. A missing ``key``, or an expected value that is
        not a number, is an error.

    Raises:
        ValueError: ``tol`` is negative or not finite.

    Examples:
        >>> from turnrl.types import Scenario, Trajectory, Turn, assistant
        >>> t = Trajectory(scenario=Scenario(id="q", data={"answer": 12}), turns=[
        ...     Turn(message=assistant("12.0 apples"), prompt_ids=[], completion_ids=[])])
        >>> numeric_match().fn(t)
        1.0
    """
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol}")

    def score(trajectory: Trajectory) -> float:
        expected = float(_expected(trajectory, key))
        parsed = parse_number(trajectory.final_response)
        return float(parsed is not None and abs(parsed - expected) <= tol)

    return reward_function(score, name=name)


def regex_format(
    pattern: str, *, full: bool = True, flags: int = re.DOTALL, name: str = "format"
) -> TrajectoryReward:
    """1.0 if every assistant turn matches ``pattern``, else 0.0.

    Every turn, not just the last: in a multi-turn conversation the format
    (say, reasoning then an answer tag) should hold on each turn, and a model
    rewarded for the last turn only learns to drop it elsewhere. A trajectory
    without assistant turns scores 0.0.

    Args:
        pattern: A regular expression.
        full: Require the whole message to match (``re.fullmatch``); if
            False, a match anywhere is enough (``re.search``).
        flags: ``re`` flags; by default ``re.DOTALL``, so that ``.`` spans
            the newlines of a multi-line message.
        name: The reward's name.

    Returns:
        The reward function.

    Raises:
        ValueError: ``pattern`` is not a valid regular expression.

    Examples:
        >>> from turnrl.types import Scenario, Trajectory, Turn, assistant
        >>> def turn(text):
        ...     return Turn(message=assistant(text), prompt_ids=[], completion_ids=[])
        >>> t = Trajectory(scenario=Scenario(id="q"), turns=[
        ...     turn("<think>\\nhm</think>ask"), turn("<think>ok</think>42")])
        >>> regex_format(r"<think>.*</think>.+").fn(t)
        1.0
        >>> regex_format(r"<think>.*</think>\\d+").fn(t)  # the first turn is not a number
        0.0
    """
    try:
        compiled = re.compile(pattern, flags)
    except re.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from e
    matches = compiled.fullmatch if full else compiled.search

    def score(trajectory: Trajectory) -> float:
        texts = [turn.message.content for turn in trajectory.turns]
        return float(bool(texts) and all(matches(text) for text in texts))

    return reward_function(score, name=name)


def length_penalty(max_tokens: int, *, name: str = "length_penalty") -> TrajectoryReward:
    """A linear penalty for completion tokens beyond a budget.

    With ``n`` the number of completion tokens over all assistant turns
    (``sum(len(turn.completion_ids))``, eos tokens included), the score is

        -max(0, n - max_tokens) / max_tokens

    so 0.0 within the budget, -1.0 at twice the budget, and unbounded below.
    Set the strength with its weight in ``combine``. Environment messages do
    not count: the agent does not write them.

    Args:
        max_tokens: The token budget, > 0.
        name: The reward's name.

    Returns:
        The reward function.

    Raises:
        ValueError: ``max_tokens`` is not a positive integer.

    Examples:
        >>> from turnrl.types import Scenario, Trajectory, Turn, assistant
        >>> def turn(n):
        ...     return Turn(message=assistant("."), prompt_ids=[], completion_ids=[0] * n)
        >>> t = Trajectory(scenario=Scenario(id="q"), turns=[turn(6), turn(9)])
        >>> length_penalty(10).fn(t)  # 15 tokens, 5 over: -5 / 10
        -0.5
        >>> length_penalty(15).fn(t)
        0.0
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")

    def score(trajectory: Trajectory) -> float:
        n_tokens = sum(len(turn.completion_ids) for turn in trajectory.turns)
        return -max(0, n_tokens - max_tokens) / max_tokens

    return reward_function(score, name=name)
