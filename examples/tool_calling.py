"""Train the embedded model to call a tool: a script to copy.

The agent is asked "What is 548*858?". The tiny character-level model cannot
multiply 3-digit numbers, so the only way to the reward is the tool: call
calculator(548*858), read 470184 in the tool message, answer 470184.

1. A tool is a plain typed function with a Google-style docstring; its JSON
   schema is derived from both (`calculator.schema`).
2. A ToolEnvironment runs call -> result -> ... -> final answer; the final
   answer is scored against scenario.data["answer"].
3. A warm-start on demonstrations, a quarter of which answer without the tool,
   then GRPO: the held-out reward and the rate of tool use rise together
   (evaluated by sampling, as in training: greedy decoding would hide a rate
   that is already above one half).

Calls use the compact format `calculator(548*858)`: the random-init model
learns to copy the question into the call quickly (one contiguous span);
`--format hermes` uses the standard `<tool_call>{"name": ..., "arguments":
...}</tool_call>` that pretrained models with a tool-aware template (Qwen,
Hermes) write. The tiny chat template ignores `tools=`; a pretrained model
with such a template needs the tools described in a system message
(`--describe-tools`, i.e. `describe_tools=not agent.renders_tools`). A model
trained from scratch learns the format from the demonstrations alone, and
the shorter prompt trains faster, so it is off by default.

Run:  python examples/tool_calling.py [--steps 20] [--warmstart-steps 250]
"""

from __future__ import annotations

import argparse
import asyncio
import random

import turnrl
from turnrl.agents.tiny import tiny_model_path
from turnrl.environments.tasks.calculator import make_scenarios
from turnrl.environments.tool_env import ToolEnvironment
from turnrl.tools import tool
from turnrl.tools.calls import CompactParser, ToolCall, parser_for_template
from turnrl.training.sft import supervised_warmstart
from turnrl.types import Message


@tool
def calculator(expression: str) -> str:
    """Multiply integers.

    Args:
        expression: Integers joined by '*', like 548*858.
    """
    product = 1
    for factor in expression.split("*"):
        product *= int(factor)  # a ValueError reaches the agent as an error message
    return str(product)


def demonstrations(env: ToolEnvironment, scenarios, tool_fraction: float) -> list[list[Message]]:
    """Solved episodes; `tool_fraction` of them call the tool, the rest answer directly."""
    rng = random.Random(0)
    conversations = []
    for s in scenarios:
        expression, answer = f"{s.data['a']}*{s.data['b']}", str(s.data["answer"])
        steps = [Message(role="assistant", content=answer)]
        if rng.random() < tool_fraction:
            call = env.parser.format(ToolCall("calculator", {"expression": expression}))
            steps = [
                Message(role="assistant", content=call),
                Message(role="tool", content=calculator(expression)),
                *steps,
            ]
        conversations.append([*env.opening(s), *steps])
    return conversations


async def main(
    steps: int,
    warmstart_steps: int,
    output_dir: str,
    tool_format: str = "compact",
    describe_tools: bool = False,
    *,
    num_demos: int = 400,
    scenarios_per_step: int = 8,
) -> dict:
    scenarios = make_scenarios(600, seed=0)  # "What is a*b?", a and b in 317..999
    held_out, train = scenarios[:100], scenarios[100:]
    max_new_tokens = 24 if tool_format == "compact" else 96
    agent = turnrl.TransformersAgent.from_pretrained(
        tiny_model_path(), sampling=turnrl.SamplingParams(max_new_tokens=max_new_tokens)
    )
    parser = (
        CompactParser()
        if tool_format == "compact"
        else parser_for_template(agent.tokenizer.chat_template)
    )
    env = ToolEnvironment(
        train,
        [calculator],
        parser=parser,
        max_tool_calls=2,
        describe_tools=describe_tools and not agent.renders_tools,
    )

    # Phase 1: supervised warm-start. A quarter of the demonstrations answer
    # without the tool (right answers the model cannot compute), so RL has to
    # find out that calling the tool is what pays.
    supervised_warmstart(
        agent,
        demonstrations(env, train[:num_demos], tool_fraction=0.75),
        steps=warmstart_steps,
        lr=3e-3,
        batch_size=32,
    )

    # Phase 2: GRPO on the final-answer reward (the environment's). No KL
    # penalty (beta 0): a short run from a warm start, and no reference model.
    config = turnrl.TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 1e-4, "micro_batch_size": 32, "warmup_steps": 5},
        algorithm={"beta": 0.0, "loss_aggregation": "seq_mean_token_mean"},
        generation={"max_new_tokens": max_new_tokens},
        rollout={"scenarios_per_step": scenarios_per_step, "num_generations": 8},
        eval={"temperature": 1.0, "num_generations": 2},
        run={"max_steps": steps, "output_dir": output_dir},
    )
    trainer = turnrl.Trainer(agent, env, None, config)
    before = await trainer.evaluate(held_out)
    summary = await trainer.train()
    after = await trainer.evaluate(held_out)
    return {
        "steps": summary["steps"],
        "wall_s": summary["wall_s"],
        "reward_before": before["eval/reward_mean"],
        "reward_after": after["eval/reward_mean"],
        "tool_use_before": before["eval/tool_use_frac"],
        "tool_use_after": after["eval/tool_use_frac"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmstart-steps", type=int, default=250)
    parser.add_argument("--format", choices=["compact", "hermes"], default="compact")
    parser.add_argument("--describe-tools", action="store_true")
    parser.add_argument("--output", default="runs/tool_calling")
    args = parser.parse_args()
    result = asyncio.run(
        main(args.steps, args.warmstart_steps, args.output, args.format, args.describe_tools)
    )
    print(
        f"held-out reward: {result['reward_before']:.3f} -> {result['reward_after']:.3f}; "
        f"episodes calling the tool: {result['tool_use_before']:.0%} -> "
        f"{result['tool_use_after']:.0%} ({result['wall_s']:.0f} s of RL)"
    )
