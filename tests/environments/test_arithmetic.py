"""Tests for turnrl.environments.tasks.arithmetic."""

import pytest

from turnrl.environments.tasks import (
    ArithmeticEnvironment,
    demonstration,
    demonstrations,
    make_scenarios,
    parse_answer,
    question_text,
    split_scenarios,
)
from turnrl.types import Scenario, assistant, system, user

# 3+4: the answer is 7.
SCENARIO = Scenario(
    id="add-3-4",
    prompt=[user("What is 3+4?")],
    data={"a": 3, "b": 4, "op": "+", "answer": 7},
)


async def play(answers: list[str], **kwargs) -> list:
    env = ArithmeticEnvironment([SCENARIO], **kwargs)
    observation, _ = await env.reset(options={"scenario": SCENARIO})
    assert observation == [user("What is 3+4?")]
    return [await env.step(assistant(a)) for a in answers]


def test_question_text_is_short_and_unspaced():
    assert question_text(3, "+", 4) == "What is 3+4?"
    assert question_text(12, "*", 5) == "What is 12*5?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  -12 apples", -12),
        ("no", None),
        ("7.", 7),
        ("", None),
        ("7", 7),
        ("The answer is 14, not 15", 14),
        ("3-4", 3),  # the first integer; the '-' belongs to no number before it
        ("- 5", 5),  # a detached minus is not a sign
        ("007", 7),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


@pytest.mark.anyio
async def test_correct_first_try_earns_1():
    (result,) = await play(["7"])
    assert result == ([], 1.0, True, False, {"correct": True, "attempt": 1, "answer": 7})


@pytest.mark.anyio
async def test_correct_second_try_earns_half():
    first, second = await play(["8", "The answer is 7."])
    assert first == (
        [user("Wrong. Try again.")],
        0.0,
        False,
        False,
        {"correct": False, "attempt": 1, "answer": 8},
    )
    assert second == ([], 0.5, True, False, {"correct": True, "attempt": 2, "answer": 7})


@pytest.mark.anyio
async def test_correct_third_try_earns_quarter():
    results = await play(["1", "no idea", "7"])
    assert [r.reward for r in results] == [0.0, 0.0, 0.25]
    assert [r.terminated for r in results] == [False, False, True]
    assert results[1].info["answer"] is None


@pytest.mark.anyio
async def test_never_correct_terminates_with_zero_after_max_attempts():
    results = await play(["1", "2", "3"])
    assert sum(r.reward for r in results) == 0.0
    assert results[-1] == ([], 0.0, True, False, {"correct": False, "attempt": 3, "answer": 3})
    assert not any(r.truncated for r in results)


@pytest.mark.anyio
async def test_custom_attempts_and_rewards():
    (result,) = await play(["0"], max_attempts=1, attempt_rewards=(2.0,))
    assert (result.reward, result.terminated) == (0.0, True)
    _, second = await play(["0", "7"], max_attempts=2, attempt_rewards=(1.0, 0.9))
    assert second.reward == 0.9


@pytest.mark.anyio
async def test_step_after_end_or_before_reset_raises():
    env = ArithmeticEnvironment()
    with pytest.raises(RuntimeError, match="before reset"):
        await env.step(assistant("7"))
    await env.reset(options={"scenario": SCENARIO})
    await env.step(assistant("7"))
    with pytest.raises(RuntimeError, match="after the episode ended"):
        await env.step(assistant("7"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_attempts": 0}, "max_attempts must be an integer >= 1"),
        ({"max_attempts": 4}, "attempt_rewards has 3 values but max_attempts=4"),
        ({"attempt_rewards": (1.0, float("nan"), 0.0)}, "must be finite"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArithmeticEnvironment(**kwargs)


@pytest.mark.anyio
async def test_reset_without_prompt_asks_from_data_and_computes_answer():
    bare = Scenario(id="x", data={"a": 6, "b": 2, "op": "-"})
    env = ArithmeticEnvironment()
    observation, info = await env.reset(options={"scenario": bare})
    assert observation == [user("What is 6-2?")] and info == {"scenario_id": "x"}
    assert (await env.step(assistant("4"))).reward == 1.0


@pytest.mark.anyio
async def test_reset_uses_a_custom_prompt_and_rejects_incomplete_data():
    custom = SCENARIO.model_copy(update={"prompt": [system("Digits only."), user("3+4?")]})
    env = ArithmeticEnvironment()
    observation, _ = await env.reset(options={"scenario": custom})
    assert observation == [system("Digits only."), user("3+4?")]
    with pytest.raises(ValueError, match="missing 'b'"):
        await env.reset(options={"scenario": Scenario(id="bad", data={"a": 1, "op": "+"})})


def test_make_scenarios_counts():
    assert len(make_scenarios()) == 100  # 10 x 10 sums
    assert len(make_scenarios(ops=("-",))) == 55  # pairs with a >= b: 10 + 9 + ... + 1
    assert len(make_scenarios(low=1, high=3, ops=("+", "-", "*"))) == 9 + 6 + 9
    assert len(make_scenarios(n=7)) == 7
    assert make_scenarios(ops=("+", "+")) == make_scenarios()  # duplicate ops ignored


def test_make_scenarios_contents():
    by_id = {s.id: s for s in make_scenarios(ops=("+", "-", "*"))}
    assert by_id["add-3-4"].data == {"a": 3, "b": 4, "op": "+", "answer": 7}
    assert by_id["sub-7-2"].data["answer"] == 5
    assert by_id["mul-3-4"].data["answer"] == 12
    assert by_id["mul-3-4"].prompt == [user("What is 3*4?")]
    assert "sub-2-7" not in by_id
    assert min(s.data["answer"] for s in by_id.values()) == 0


def test_make_scenarios_is_deterministic_and_seed_dependent():
    ids = [s.id for s in make_scenarios(seed=1)]
    assert ids == [s.id for s in make_scenarios(seed=1)]
    assert ids != [s.id for s in make_scenarios(seed=2)]
    assert ids != sorted(ids)  # shuffled
    assert [s.id for s in make_scenarios(n=5, seed=1)] == ids[:5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"low": 5, "high": 4}, "low must be <= high"),
        ({"ops": ("/",)}, "ops must be a non-empty subset"),
        ({"ops": ()}, "ops must be a non-empty subset"),
        ({"n": 101}, r"n must be in \[0, 100\]"),
    ],
)
def test_make_scenarios_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scenarios(**kwargs)


def test_split_scenarios_disjoint_complete_deterministic():
    scenarios = make_scenarios()
    train, held_out = split_scenarios(scenarios, eval_fraction=0.2, seed=3)
    assert (len(train), len(held_out)) == (80, 20)
    train_ids, eval_ids = {s.id for s in train}, {s.id for s in held_out}
    assert not train_ids & eval_ids
    assert train_ids | eval_ids == {s.id for s in scenarios}
    assert split_scenarios(scenarios, 0.2, 3) == (train, held_out)
    assert split_scenarios(scenarios, 0.2, 4)[1] != held_out


def test_split_scenarios_small_lists_keep_both_sides_non_empty():
    two = make_scenarios(n=2)
    assert [len(part) for part in split_scenarios(two, eval_fraction=0.01)] == [1, 1]
    assert [len(part) for part in split_scenarios(two, eval_fraction=0.99)] == [1, 1]


@pytest.mark.parametrize(
    ("scenarios", "fraction", "match"),
    [
        (make_scenarios(n=10), 0.0, r"eval_fraction must be in \(0, 1\)"),
        (make_scenarios(n=10), 1.0, r"eval_fraction must be in \(0, 1\)"),
        (make_scenarios(n=1), 0.5, "at least 2 scenarios"),
        ([SCENARIO, SCENARIO], 0.5, r"duplicated: \['add-3-4'\]"),
    ],
)
def test_split_scenarios_validation(scenarios, fraction, match):
    with pytest.raises(ValueError, match=match):
        split_scenarios(scenarios, eval_fraction=fraction)


@pytest.mark.anyio
async def test_demonstration_is_a_correct_first_answer():
    conversation = demonstration(SCENARIO)
    assert conversation == [user("What is 3+4?"), assistant("7")]
    env = ArithmeticEnvironment()
    await env.reset(options={"scenario": SCENARIO})
    assert (await env.step(conversation[-1])).reward == 1.0


@pytest.mark.anyio
async def test_sloppy_teacher_demonstrations_replay_as_retries():
    scenarios = make_scenarios(low=0, high=99, b_range=(0, 9), ops=("+",), n=200, seed=1)
    convs = demonstrations(scenarios, retry_fraction=0.8, mistake="plus_ten", seed=3)
    env = ArithmeticEnvironment()
    returns = []
    for scenario, conversation in zip(scenarios, convs, strict=True):
        answers = [int(m.content) for m in conversation if m.role == "assistant"]
        right = answers[-1]
        assert answers == [right + 10 * k for k in range(1, len(answers))] + [right]
        await env.reset(options={"scenario": scenario})
        rewards = [(await env.step(assistant(str(a)))).reward for a in answers]
        returns.append(sum(rewards))
    # 20% right first (1.0), 40% after one miss (0.5), 40% after two (0.25): about 0.5.
    assert 0.42 < sum(returns) / len(returns) < 0.58
    first_try = sum(r == 1.0 for r in returns) / len(returns)
    assert 0.12 < first_try < 0.28


def test_demonstration_options_are_checked():
    with pytest.raises(ValueError, match="mistake must be"):
        demonstrations(make_scenarios(n=4), mistake="random")
    with pytest.raises(ValueError, match="label_noise must be"):
        demonstrations(make_scenarios(n=4), label_noise=1.5)


def test_label_noise_leaves_the_other_draws_alone():
    scenarios = make_scenarios(n=100, seed=2)
    clean = demonstrations(scenarios, seed=5)
    noisy = demonstrations(scenarios, label_noise=0.5, seed=5)
    assert [c[:-1] for c in clean] == [c[:-1] for c in noisy]
    changed = sum(a[-1] != b[-1] for a, b in zip(clean, noisy, strict=True))
    assert 30 < changed < 70
