"""Smoke run of examples/tool_calling.py (a couple of steps)."""

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tool_calling.py"


def load():
    spec = importlib.util.spec_from_file_location("tool_calling", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
async def test_tool_calling_example_runs(tmp_path):
    module = load()
    assert module.calculator.schema["function"]["parameters"]["required"] == ["expression"]
    result = await module.main(2, 3, str(tmp_path / "run"), num_demos=16, scenarios_per_step=2)
    assert result["steps"] == 2
    for key in ("reward_before", "reward_after", "tool_use_before", "tool_use_after"):
        assert 0.0 <= result[key] <= 1.0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all("rollout/tool_calls" in m and "rollout/tool_errors" in m for m in metrics)


def test_demonstrations_match_the_environment():
    module = load()
    from turnrl.environments.tasks.calculator import make_scenarios
    from turnrl.environments.tool_env import ToolEnvironment
    from turnrl.tools.calls import CompactParser

    scenarios = make_scenarios(4, seed=1)
    env = ToolEnvironment(scenarios, [module.calculator], parser=CompactParser())
    demo = module.demonstrations(env, scenarios, tool_fraction=1.0)[0]
    a, b = scenarios[0].data["a"], scenarios[0].data["b"]
    assert [m.content for m in demo[1:]] == [f"calculator({a}*{b})", str(a * b), str(a * b)]
