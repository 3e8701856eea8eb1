"""ToolEnvironment and the calculator task: the call -> result -> answer loop."""

import doctest

import anyio
import pytest

from turnrl.environments import TurnLimit, check_env
from turnrl.environments.tasks import calculator as calculator_task
from turnrl.environments.tasks.calculator import (
    calculator,
    calculator_env,
    demonstration,
    demonstrations,
    make_scenarios,
)
from turnrl.environments.tool_env import ToolEnvironment, exact_answer
from turnrl.tools import tool
from turnrl.tools.calls import CompactParser, HermesParser
from turnrl.training.batch import build_batch
from turnrl.training.offline import trajectory_from_messages
from turnrl.training.rollout import collect, offered_tools, run_episode
from turnrl.training.rollout_metrics import rollout_metrics
from turnrl.types import Message, Scenario, TrajectoryGroup, Turn, system, user


def assistant_text(content):
    return Message(role="assistant", content=content)


def broken(x: int) -> int:
    """Always fails.

    Args:
        x: Ignored.
    """
    raise RuntimeError("tool exploded")


SCENARIO = Scenario(id="q", prompt=[user("What is 548*858?")], data={"answer": 548 * 858})


async def start(env, scenario=SCENARIO):
    env = env.clone()
    await env.reset(options={"scenario": scenario})
    return env


@pytest.mark.anyio
async def test_call_result_then_final_answer():
    env = await start(calculator_env([SCENARIO]))
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "548*858"}}</tool_call>'
    observation, reward, terminated, truncated, info = await env.step(assistant_text(call))
    assert observation == [Message(role="tool", content="470184")]
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info == {"tool_calls": 1, "tool_errors": 0}
    observation, reward, terminated, truncated, info = await env.step(assistant_text("470184"))
    assert (observation, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info == {"tool_calls": 0, "tool_errors": 0}


@pytest.mark.anyio
async def test_errors_are_messages_the_agent_sees_and_are_counted():
    env = await start(ToolEnvironment([SCENARIO], [calculator, broken]))
    text = (
        '<tool_call>{"name": "broken", "arguments": {"x": 1}}</tool_call>'
        "<tool_call>{not json}</tool_call>"
        '<tool_call>{"name": "search", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "calculator", "arguments": {"expr": "1+1"}}</tool_call>'
    )
    observation, reward, terminated, truncated, info = await env.step(assistant_text(text))
    assert [m.role for m in observation] == ["tool"] * 4
    contents = [m.content for m in observation]
    assert contents[0] == "Error: broken raised RuntimeError: tool exploded"
    assert contents[1].startswith("Error: malformed tool call: not valid JSON")
    assert contents[2].startswith("Error: unknown tool 'search'")
    assert contents[3].startswith("Error: unknown argument(s) 'expr'")
    assert info == {"tool_calls": 4, "tool_errors": 4}
    assert not terminated and not truncated and reward == 0.0


@pytest.mark.anyio
async def test_tool_timeout_is_an_error_not_a_crash():
    @tool
    async def hang(x: int) -> int:
        """Never returns in time.

        Args:
            x: Ignored.
        """
        await anyio.sleep(10)
        return x

    env = await start(ToolEnvironment([SCENARIO], [hang], tool_timeout_s=0.1))
    result = await env.step(
        assistant_text('<tool_call>{"name": "hang", "arguments": {"x": 1}}</tool_call>')
    )
    assert result.observation[0].content == "Error: hang did not finish within 0.1 s"
    assert result.info["tool_errors"] == 1


@pytest.mark.anyio
async def test_calls_past_the_budget_are_refused_and_truncate():
    env = await start(calculator_env([SCENARIO], parser=CompactParser(), max_tool_calls=2))
    first = await env.step(assistant_text("calculator(1+1)"))
    assert first.observation[0].content == "2" and not first.truncated
    second = await env.step(assistant_text("calculator(2+2)\ncalculator(3+3)"))
    assert [m.content for m in second.observation] == [
        "4",
        "Error: no tool calls left (2 per episode); answer now",
    ]
    assert second.truncated and not second.terminated
    assert second.info == {"tool_calls": 2, "tool_errors": 1, "tool_limit": True}
    with pytest.raises(RuntimeError, match="after the episode ended"):
        await env.step(assistant_text("6"))


@pytest.mark.anyio
async def test_describe_tools_adds_or_extends_the_system_message():
    env = calculator_env([SCENARIO], parser=CompactParser(), describe_tools=True)
    opening, _ = await env.clone().reset(options={"scenario": SCENARIO})
    assert opening[0].role == "system" and opening[1:] == SCENARIO.prompt
    assert "calculator(expression): Evaluate an arithmetic expression." in opening[0].content
    with_system = Scenario(id="s", prompt=[system("Be brief."), user("What is 1*1?")])
    opening = env.opening(with_system)
    assert len(opening) == 2 and opening[0].content.startswith("Be brief.\n\nTools:")
    assert calculator_env([SCENARIO]).opening(SCENARIO) == SCENARIO.prompt


@pytest.mark.anyio
async def test_check_env_passes():
    await check_env(calculator_env(make_scenarios(3)))
    await check_env(calculator_env(make_scenarios(3), parser=CompactParser(), describe_tools=True))


def test_construction_errors():
    with pytest.raises(ValueError, match="distinct"):
        ToolEnvironment([], [calculator, tool(calculator)])
    with pytest.raises(ValueError, match="max_tool_calls"):
        ToolEnvironment([], [calculator], max_tool_calls=-1)
    with pytest.raises(ValueError, match="cannot make a tool of"):
        ToolEnvironment([], [lambda x: x])


def test_exact_answer_and_calculator():
    assert exact_answer("470184", SCENARIO) == 1.0 and exact_answer("47018", SCENARIO) == 0.0
    assert exact_answer("no idea", SCENARIO) == 0.0
    with pytest.raises(ValueError, match="no data\\['answer'\\]"):
        exact_answer("1", Scenario(id="x"))
    assert calculator("-(2+3)*4 // 3") == "-7" and calculator("7 % 4") == "3"
    for bad in ("__import__('os')", "2**8", "1/0", "x+1", "1" * 300):
        with pytest.raises((ValueError, ZeroDivisionError)):
            calculator(bad)


def test_scenarios_and_demonstrations():
    scenarios = make_scenarios(50, seed=3)
    assert len({s.id for s in scenarios}) == 50
    assert all(
        100 <= s.data["a"] <= 999 and s.data["answer"] == s.data["a"] * s.data["b"]
        for s in scenarios
    )
    with pytest.raises(ValueError, match="n must be in"):
        make_scenarios(5, low=1, high=2)
    env = calculator_env(scenarios, parser=HermesParser(), describe_tools=True)
    convs = demonstrations(env, scenarios, tool_fraction=0.5, seed=0)
    with_tool = [c for c in convs if len(c) == len(env.opening(scenarios[0])) + 3]
    assert 10 < len(with_tool) < 40
    demo = demonstration(env, scenarios[0])
    assert demo[:2] == env.opening(scenarios[0])
    assert env.parser.parse(demo[2].content)[0].arguments == {
        "expression": scenarios[0].data["expression"]
    }
    assert demo[3].role == "tool" and demo[3].content == demo[4].content
    results = doctest.testmod(calculator_task)
    assert results.failed == 0 and results.attempted > 0


# --- rollout: tools offered to the agent, counts summed into metrics -----------------------


class ScriptedAgent:
    """Replies with fixed texts and records the tools it was offered."""

    def __init__(self, replies, *, takes_tools=True):
        self.replies, self.offered = list(replies), []
        if not takes_tools:
            self.respond = self._respond_plain

    async def respond(self, conversation, *, tools=None):
        self.offered.append(tools)
        return self._turn(self.replies.pop(0))

    async def _respond_plain(self, conversation):
        return self._turn(self.replies.pop(0))

    @staticmethod
    def _turn(text):
        return Turn(message=assistant_text(text), prompt_ids=[1], completion_ids=[2])


@pytest.mark.anyio
async def test_rollout_offers_tools_and_sums_counts():
    env = TurnLimit(calculator_env([SCENARIO], parser=CompactParser()), 5)
    assert offered_tools(env) == [calculator_env([]).tools[0].schema]
    agent = ScriptedAgent(["calculator(548*858", "calculator(548*858)", "470184"])
    trajectory = await run_episode(agent, env, SCENARIO)
    assert agent.offered == [offered_tools(env)] * 3  # the same tools on every turn
    assert trajectory.terminated and trajectory.env_return == 1.0
    assert trajectory.info == {"tool_calls": 2, "tool_errors": 1}  # summed over the episode
    assert [m.role for m in trajectory.conversation] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    # An agent without a `tools` keyword still works: it is just not offered them.
    plain = ScriptedAgent(["470184"], takes_tools=False)
    assert (await run_episode(plain, env, SCENARIO)).env_return == 1.0

    group = TrajectoryGroup(
        scenario=SCENARIO,
        trajectories=[trajectory, await run_episode(ScriptedAgent(["12"]), env, SCENARIO)],
    )
    metrics = rollout_metrics([group])
    assert metrics["rollout/tool_calls"] == 1.0  # (2 + 0) / 2 episodes
    assert metrics["rollout/tool_errors"] == 0.5
    assert metrics["rollout/tool_use_frac"] == 0.5
    assert offered_tools(TurnLimit(env, 3)) is not None
    from turnrl.environments.tasks import ArithmeticEnvironment

    assert offered_tools(ArithmeticEnvironment([])) is None
    no_tools = await run_episode(
        ScriptedAgent(["7"]),
        ArithmeticEnvironment([]),
        Scenario(id="a", data={"a": 3, "op": "+", "b": 4}),
    )
    assert "rollout/tool_calls" not in rollout_metrics(
        [TrajectoryGroup(scenario=no_tools.scenario, trajectories=[no_tools])]
    )


# --- the loss mask in a mixed conversation -------------------------------------------------


def masked_texts(agent, batch, row=0):
    """The decoded runs of trained tokens, and of untrained tokens, of one row."""
    ids, mask = batch.input_ids[row].tolist(), batch.loss_mask[row].tolist()
    runs, current, flag = {1.0: [], 0.0: []}, [], mask[0]
    for token, m in zip(ids, mask, strict=True):
        if m != flag:
            runs[flag].append(agent.tokenizer.decode(current))
            current, flag = [], m
        current.append(token)
    runs[flag].append(agent.tokenizer.decode(current))
    return runs[1.0], runs[0.0]


@pytest.mark.anyio
async def test_tool_results_masked_out_tool_calls_trained(tiny_agent, scripted_engine):
    # A real rollout through the agent (with scripted text) and the environment.
    scripted_engine(tiny_agent, ["calculator(548*858)", "470184"])
    env = calculator_env([SCENARIO], parser=CompactParser())
    trajectory = await run_episode(tiny_agent, env, SCENARIO)
    assert trajectory.env_return == 1.0
    batch = build_batch(
        [TrajectoryGroup(scenario=SCENARIO, trajectories=[trajectory])],
        pad_token_id=tiny_agent.tokenizer.pad_token_id,
    )
    conversation = [m.to_chat() for m in trajectory.conversation]
    reference = tiny_agent.tokenizer.apply_chat_template(
        conversation, return_dict=True, return_assistant_tokens_mask=True
    )
    assert batch.input_ids[0].tolist() == reference["input_ids"]
    assert batch.loss_mask[0].long().tolist() == reference["assistant_masks"]
    trained, untrained = masked_texts(tiny_agent, batch)
    assert trained == ["calculator(548*858)<|end|>", "470184<|end|>"]
    assert untrained == [
        "<|user|>What is 548*858?<|end|><|assistant|>",
        "<|tool|>470184<|end|><|assistant|>",  # the tool result: never trained on
    ]
    # A demonstration of the same conversation gets the same mask (warm-start path).
    offline = trajectory_from_messages(tiny_agent, trajectory.conversation)
    demo = build_batch(
        [TrajectoryGroup(scenario=SCENARIO, trajectories=[offline])],
        pad_token_id=tiny_agent.tokenizer.pad_token_id,
    )
    assert demo.input_ids.tolist() == batch.input_ids.tolist()
    assert demo.loss_mask.tolist() == batch.loss_mask.tolist()


TOOLS_TEMPLATE = (
    "{%- if tools -%}{{ '<|system|>tools:' + (tools | tojson) + '<|end|>' }}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{%- else -%}{{ message['content'] + '<|end|>' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


@pytest.mark.anyio
async def test_tools_rendered_by_a_template_that_declares_them(tiny_agent, scripted_engine):
    assert not tiny_agent.renders_tools  # the tiny template ignores tools=
    tiny_agent.tokenizer.chat_template = TOOLS_TEMPLATE
    del tiny_agent.__dict__["renders_tools"]  # the cached answer was for the old template
    assert tiny_agent.renders_tools
    scripted_engine(
        tiny_agent,
        [
            '<tool_call>{"name": "calculator", "arguments": {"expression": "548*858"}}</tool_call>',
            "470184",
        ],
    )
    env = calculator_env([SCENARIO])
    trajectory = await run_episode(tiny_agent, env, SCENARIO)
    assert trajectory.env_return == 1.0 and trajectory.info["tool_calls"] == 1
    prompt = tiny_agent.tokenizer.decode(trajectory.turns[0].prompt_ids)
    assert prompt.startswith(
        '<|system|>tools:[{"type": "function", "function": {"name": "calculator"'
    )
    # Later turns keep the sampled tokens after the same tools preamble.
    batch = build_batch(
        [TrajectoryGroup(scenario=SCENARIO, trajectories=[trajectory])],
        pad_token_id=tiny_agent.tokenizer.pad_token_id,
    )
    reference = tiny_agent.tokenizer.apply_chat_template(
        [m.to_chat() for m in trajectory.conversation],
        tools=env.tool_schemas,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert batch.loss_mask[0].long().tolist() == reference["assistant_masks"]
    # A demonstration of the same conversation gets the same prompts when given the tools.
    plain = [Message(role=m.role, content=m.content) for m in trajectory.conversation]
    demo = trajectory_from_messages(tiny_agent, plain, tools=env.tools)
    assert [t.prompt_ids for t in demo.turns] == [t.prompt_ids for t in trajectory.turns]
    without = trajectory_from_messages(tiny_agent, plain)
    assert without.turns[0].prompt_ids != trajectory.turns[0].prompt_ids


@pytest.mark.anyio
async def test_untrained_tiny_model_rolls_out_without_crashing(tiny_agent):
    env = calculator_env(make_scenarios(2), parser=CompactParser(), describe_tools=True)
    groups = await collect(tiny_agent, env, env.scenarios, 2)
    assert not any(t.failed for g in groups for t in g)
    assert "rollout/tool_use_frac" in rollout_metrics(groups)


# --- learning --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.anyio
async def test_tiny_model_learns_to_call_the_calculator(tmp_path):
    """benchmarks/tool_task.py with its defaults (about 6 minutes on one thread).

    Warm-start on demonstrations (a quarter answer without the tool), then 20
    GRPO steps. Measured (seed 0): tool use 0.69 -> 0.995, reward 0.585 -> 0.85.
    Deterministic on one CPU thread; on other hardware the warm-start's sudden
    drop of the loss (copying the tool result) may come later than step 250.
    """
    import importlib.util
    from pathlib import Path

    import torch

    path = Path(__file__).parents[2] / "benchmarks" / "tool_task.py"
    spec = importlib.util.spec_from_file_location("tool_task", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        result = await bench.main(bench.parse_args(["--output", str(tmp_path)]))
    finally:
        torch.set_num_threads(threads)
    before, after = result["before_rl"], result["after_rl"]
    assert before["reward"] > 0.3  # the warm-start taught the copy, so RL has a signal
    assert after["tool_use"] >= before["tool_use"] + 0.2
    assert after["reward"] >= before["reward"] + 0.15
