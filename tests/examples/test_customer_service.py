"""Smoke run of examples/customer_service.py (a short version of what users run)."""

import importlib.util
import json
from pathlib import Path

import anyio
import pytest

import turnrl
from turnrl.environments.conversation import frozen_copy
from turnrl.types import Trajectory, TrajectoryGroup, Turn, assistant, user

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "customer_service.py"


def load():
    spec = importlib.util.spec_from_file_location("customer_service", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scenarios_have_a_goal_keyword_and_a_customer():
    module = load()
    scenarios = module.make_scenarios()
    assert {s.data["goal"] for s in scenarios} == {"refund", "shipping", "account"}
    # Each scenario is played by a persona (the frozen model) or by a script.
    assert all(("persona" in s.data) != ("script" in s.data) for s in scenarios)
    assert {"persona" in s.data for s in scenarios} == {True, False}
    # Every demonstration says its scenario's keyword, so the warm-start teaches it.
    for scenario, demo in zip(scenarios, module.demonstrations(), strict=True):
        assert any(k in demo[-1].content.lower() for k in scenario.data["keywords"])


@pytest.mark.anyio
async def test_customer_follows_the_script_or_plays_the_persona(tiny_agent):
    module = load()
    model = frozen_copy(tiny_agent)
    env = turnrl.ConversationEnvironment(
        module.make_scenarios(), module.Customer(model), max_turns=2
    )
    scripted, played = 0, 0
    for scenario in env.scenarios:
        await env.reset(options={"scenario": scenario})
        first = await env.step(assistant("Hello!"))
        second = await env.step(assistant("Anything else?"))
        if "script" in scenario.data:  # one line, then the customer ends the conversation
            assert first.observation == [user(scenario.data["script"][0])]
            assert (second.observation, second.terminated) == ([], True)
            scripted += 1
        else:  # the frozen model replies every turn; the turn limit ends it
            assert [m.role for m in first.observation + second.observation] == ["user"] * 2
            assert (second.terminated, second.truncated) == (False, True)
            played += 1
    assert (scripted, played) == (2, 4) and model.engine.stats.requests == 8


def test_rule_components_on_hand_written_replies(tiny_agent):
    module = load()
    rewards = module.make_rewards(frozen_copy(tiny_agent))
    refund = next(s for s in module.make_scenarios() if s.data["goal"] == "refund")

    def reply(text):
        turn = Turn(message=assistant(text), prompt_ids=[], completion_ids=[0] * 75)
        return Trajectory(scenario=refund, initial_messages=refund.prompt, turns=[turn])

    group = TrajectoryGroup(
        scenario=refund,
        trajectories=[reply("Sorry! Refund sent."), reply("Here is a tracking id.")],
    )
    good, bad = anyio.run(rewards, group)
    assert (good.components["rubric/goal_keyword"], good.components["rubric/polite"]) == (1, 1)
    assert (bad.components["rubric/goal_keyword"], bad.components["rubric/polite"]) == (0, 0)
    assert good.components["length"] == -0.25  # 75 tokens, 15 over the budget of 60
    judge = good.components["rubric/judge"]
    assert 0.0 <= judge <= 1.0
    # rubric: (2 * 1 + 1 * 1 + 1 * judge) / 4; total: rubric + 0.5 * length
    assert good.score == pytest.approx((3 + judge) / 4 - 0.125)


@pytest.mark.anyio
async def test_customer_service_example_trains_and_prints_the_components(tmp_path, capsys):
    summary = await load().main(2, 2, str(tmp_path / "run"))
    assert summary["steps"] == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["rollout/episodes"] == 12 and r["rollout/failed"] == 0
        assert 0.0 <= r["reward/rubric/judge_mean"] <= 1.0
        assert {"reward/rubric/goal_keyword_mean", "reward/length_mean"} <= r.keys()
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.split()[:2] == ["step", "reward"])
    assert out[header].split() == [
        "step",
        "reward",
        "rubric",
        "keyword",
        "polite",
        "judge",
        "length",
    ]
    assert [row.split()[0] for row in out[header + 1 :]] == ["1", "2"]
