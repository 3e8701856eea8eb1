"""The quiz task: per-turn rewards, the conversation it holds, and its teacher."""

import asyncio
import doctest

import pytest

from turnrl.environments import check_env
from turnrl.environments.tasks import quiz
from turnrl.environments.tasks.quiz import (
    QuizEnvironment,
    demonstrations,
    make_quiz_scenarios,
)
from turnrl.types import Scenario, assistant


async def play(env: QuizEnvironment, scenario: Scenario, answers: list[str]) -> list:
    observation, _ = await env.reset(options={"scenario": scenario})
    seen, results = [observation], []
    for answer in answers:
        result = await env.step(assistant(answer))
        results.append(result)
        seen.append(result.observation)
    return seen, results


def test_each_turn_is_paid_its_own_reward() -> None:
    scenario = make_quiz_scenarios(1, questions=3, seed=4)[0]
    sums = [q["a"] + q["b"] for q in scenario.data["questions"]]
    env = QuizEnvironment([scenario])
    seen, results = asyncio.run(play(env, scenario, [str(sums[0] + 10), str(sums[1]), "x"]))
    assert [r.reward for r in results] == [0.0, pytest.approx(1 / 3), 0.0]
    assert [r.terminated for r in results] == [False, False, True]
    assert not any(r.truncated for r in results)
    assert [r.info["correct"] for r in results] == [False, True, False]
    q = scenario.data["questions"]
    assert seen[1][0].content == f"Wrong. What is {q[1]['a']}+{q[1]['b']}?"
    assert seen[2][0].content == f"Right. What is {q[2]['a']}+{q[2]['b']}?"
    assert seen[3] == []
    with pytest.raises(RuntimeError, match="after the episode ended"):
        asyncio.run(env.step(assistant("1")))


def test_teacher_episodes_replay_in_the_environment_with_its_accuracy() -> None:
    scenarios = make_quiz_scenarios(200, questions=3)
    convs = demonstrations(scenarios, accuracy=0.5, seed=1)
    env = QuizEnvironment(scenarios)
    returns = []
    for scenario, conv in zip(scenarios, convs, strict=True):
        answers = [m.content for m in conv if m.role == "assistant"]
        seen, results = asyncio.run(play(env, scenario, answers))
        # The teacher's user messages are what the environment says.
        told = [m.content for m in conv if m.role == "user"]
        assert told == [obs[0].content for obs in seen if obs]
        returns.append(sum(r.reward for r in results))
    assert 0.4 < sum(returns) / len(returns) < 0.6


def test_bad_scenarios_and_settings_are_refused_with_the_fix() -> None:
    env = QuizEnvironment()
    with pytest.raises(ValueError, match="needs data\\['questions'\\]"):
        asyncio.run(env.reset(options={"scenario": Scenario(id="q", data={})}))
    with pytest.raises(ValueError, match="needs 'a' and 'b'"):
        asyncio.run(env.reset(options={"scenario": Scenario(id="q", data={"questions": [{}]})}))
    with pytest.raises(ValueError, match="accuracy"):
        demonstrations(make_quiz_scenarios(1), accuracy=1.5)
    with pytest.raises(ValueError, match="n and questions"):
        make_quiz_scenarios(0)


def test_check_env_passes_and_sees_termination() -> None:
    report = asyncio.run(check_env(QuizEnvironment(make_quiz_scenarios(2))))
    assert "terminated" in str(report)


def test_doc_examples() -> None:
    results = doctest.testmod(quiz)
    assert results.failed == 0 and results.attempted > 0
