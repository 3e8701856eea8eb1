"""Tests for turnrl.rewards.builtin, and the doctests of the rewards package."""

from __future__ import annotations

import doctest
import importlib

import pytest

from turnrl.rewards import (
    RewardFunction,
    RewardResult,
    exact_match,
    length_penalty,
    numeric_match,
    regex_format,
)
from turnrl.rewards.builtin import parse_number
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, Turn


def make_trajectory(*responses: str, data: dict | None = None, tokens: int = 2) -> Trajectory:
    """One assistant turn per response, each with ``tokens`` completion ids."""
    data = {"answer": 7} if data is None else data
    return Trajectory(
        scenario=Scenario(id="s", data=data),
        turns=[
            Turn(
                message=Message(role="assistant", content=text, token_ids=[5] * tokens),
                prompt_ids=[1, 2, 3],
                completion_ids=[5] * tokens,
                logprobs=[-0.1] * tokens,
            )
            for text in responses
        ],
        env_messages=[[] for _ in responses],
        env_rewards=[0.0 for _ in responses],
    )


async def score_all(reward: RewardFunction, *trajectories: Trajectory) -> list[RewardResult]:
    scenario = trajectories[0].scenario
    return await reward(TrajectoryGroup(scenario=scenario, trajectories=list(trajectories)))


def test_default_names_and_overrides():
    assert exact_match().name == "exact_match"
    assert numeric_match().name == "numeric_match"
    assert regex_format(r".*").name == "format"
    assert length_penalty(10).name == "length_penalty"
    assert exact_match(name="em").name == "em"
    for reward in (exact_match(), numeric_match(), regex_format(".*"), length_penalty(1)):
        assert isinstance(reward, RewardFunction)


# --- exact_match ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "answer", "kwargs", "expected"),
    [
        ("7", 7, {}, 1.0),  # str(7) == "7"
        (" 7\n", 7, {}, 1.0),  # stripped
        (" 7\n", 7, {"strip": False}, 0.0),
        ("Paris", " Paris ", {}, 1.0),  # the expected side is stripped too
        ("paris", "Paris", {}, 0.0),
        ("PARIS", "Paris", {"case_sensitive": False}, 1.0),
        ("7.0", 7, {}, 0.0),  # text, not numbers
        ("", "", {}, 1.0),
    ],
)
def test_exact_match(response, answer, kwargs, expected):
    assert exact_match(**kwargs).fn(make_trajectory(response, data={"answer": answer})) == expected


def test_exact_match_uses_final_turn_and_custom_key():
    trajectory = make_trajectory("Lyon", "Paris", data={"city": "Paris"})
    assert exact_match(key="city").fn(trajectory) == 1.0


@pytest.mark.anyio
async def test_exact_match_missing_key_is_an_error_naming_the_key():
    ok = make_trajectory("7")
    missing = make_trajectory("7", data={"solution": 7})

    results = await score_all(exact_match(), ok, missing)

    assert results[0] == RewardResult(1.0)
    assert results[1].error == "exact_match: raised LookupError: scenario 's' has no data['answer']"


# --- numeric_match -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("7", 7, 1.0),
        ("The answer is 7.", 7, 1.0),
        ("-3.5 degrees", -3.5, 1.0),
        ("+2", 2, 1.0),
        (".5", 0.5, 1.0),
        ("1e3 items", 1000, 1.0),
        ("12", "12", 1.0),  # the expected value may be a numeric string
        ("3 or 7", 7, 0.0),  # the first number counts
        ("seven", 7, 0.0),  # no number
        ("", 7, 0.0),
        ("7.0000001", 7, 1.0),  # |7.0000001 - 7| = 1e-7 <= 1e-6
        ("7.00001", 7, 0.0),  # |7.00001 - 7| = 1e-5 > 1e-6
    ],
)
def test_numeric_match(response, answer, expected):
    assert numeric_match().fn(make_trajectory(response, data={"answer": answer})) == expected


def test_numeric_match_tolerance():
    trajectory = make_trajectory("3.14")
    # |3.14 - 3.14159| = 0.00159
    assert numeric_match(tol=0.01).fn(make_trajectory("3.14", data={"answer": 3.14159})) == 1.0
    assert numeric_match(tol=0.001).fn(make_trajectory("3.14", data={"answer": 3.14159})) == 0.0
    assert numeric_match(tol=0.0).fn(trajectory) == 0.0  # answer is 7
    with pytest.raises(ValueError, match="tol"):
        numeric_match(tol=-1.0)


@pytest.mark.anyio
async def test_numeric_match_errors_on_missing_or_non_numeric_answer():
    results = await score_all(
        numeric_match(),
        make_trajectory("7", data={}),
        make_trajectory("7", data={"answer": "seven"}),
    )
    assert (
        results[0].error == "numeric_match: raised LookupError: scenario 's' has no data['answer']"
    )
    assert results[1].error is not None
    assert results[1].error.startswith("numeric_match: raised ValueError")


def test_parse_number():
    assert parse_number("x=-12, y=3") == -12.0
    assert parse_number("2.5e-1") == 0.25
    assert parse_number("1,000") == 1.0
    assert parse_number("no digits") is None


# --- regex_format -------------------------------------------------------------------


def test_regex_format_checks_every_assistant_turn():
    reward = regex_format(r"<answer>\d+</answer>")
    assert reward.fn(make_trajectory("<answer>1</answer>", "<answer>2</answer>")) == 1.0
    assert reward.fn(make_trajectory("<answer>1</answer>", "2")) == 0.0
    assert reward.fn(make_trajectory("1", "<answer>2</answer>")) == 0.0


def test_regex_format_full_vs_search():
    text = "so <answer>4</answer>"
    assert regex_format(r"<answer>\d+</answer>").fn(make_trajectory(text)) == 0.0
    assert regex_format(r"<answer>\d+</answer>", full=False).fn(make_trajectory(text)) == 1.0


def test_regex_format_dotall_by_default():
    text = "<think>a\nb</think>42"
    assert regex_format(r"<think>.*</think>\d+").fn(make_trajectory(text)) == 1.0
    assert regex_format(r"<think>.*</think>\d+", flags=0).fn(make_trajectory(text)) == 0.0


def test_regex_format_without_turns_scores_zero():
    assert regex_format(r".*").fn(make_trajectory()) == 0.0


def test_regex_format_invalid_pattern():
    with pytest.raises(ValueError, match="invalid regular expression"):
        regex_format(r"(unclosed")


# --- length_penalty ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("turn_tokens", "max_tokens", "expected"),
    [
        ([3], 10, 0.0),  # within budget
        ([10], 10, 0.0),  # exactly at the budget
        ([11], 10, -0.1),  # 1 over: -1 / 10
        ([6, 9], 10, -0.5),  # 15 tokens over all turns, 5 over: -5 / 10
        ([20], 10, -1.0),  # twice the budget: -10 / 10
        ([30], 10, -2.0),  # unbounded below: -20 / 10
        ([], 10, 0.0),
    ],
)
def test_length_penalty(turn_tokens, max_tokens, expected):
    trajectory = Trajectory(
        scenario=Scenario(id="s"),
        turns=[
            Turn(
                message=Message(role="assistant", content="."),
                prompt_ids=[],
                completion_ids=[0] * n,
            )
            for n in turn_tokens
        ],
    )
    assert length_penalty(max_tokens).fn(trajectory) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_length_penalty_rejects_bad_budget(bad):
    with pytest.raises(ValueError, match="max_tokens"):
        length_penalty(bad)


# --- doctests ----------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["base", "combine", "builtin"])
def test_doctests(module):
    # import_module: `turnrl.rewards.combine` as an attribute is the function.
    results = doctest.testmod(
        importlib.import_module(f"turnrl.rewards.{module}"), optionflags=doctest.ELLIPSIS
    )
    assert results.attempted > 0
    assert results.failed == 0
