"""Train a reasoning agent whose chat template forgets its earlier thinking: a script to copy.

The agent answers a quiz of sums, one per turn, and thinks before each answer:
`<think>49+6=55</think>55`. Each right answer pays its share of 1 on its turn.

Its chat template is the embedded tokenizer's `reasoning` variant, which does
what Qwen3's does: a reply before the last user message loses its thinking
span. The prompt of turn 2 shows turn 1 as `55`, not as it was sampled, so it
does not extend turn 1's prompt and completion, and turnrl trains each such
turn as a row of its own (step-wise samples; `train/num_sequences` counts the
rows, `train/num_trajectories` the episodes), each with the exact tokens the
model saw and sampled.

The environment reads the answer after the thinking (`AnswerAfterThinking`):
the quiz takes the first integer of a reply, which would be inside it.

1. Warm-start the random model on a sloppy teacher's demonstrations, thinking
   included: half of its sums are off by ten.
2. GRPO with the balanced profile; the reward on held-out quizzes is printed
   before and after (quizzes no demonstration or RL step saw; with sums this
   small, their single questions do occur in training).

`--context drop-reasoning` keeps the default (prefix) template and drops the
thinking with a context policy instead (`turnrl.DropReasoning`, the same view
the template gives); `--context keep-last` shows the agent only the opening
and its last turn, thinking included (`turnrl.KeepLastTurns`).

Run:  python examples/reasoning_agent.py [--steps 30] [--warmstart-steps 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections.abc import Sequence
from pathlib import Path

import turnrl
from turnrl.agents.tiny import tiny_model_path
from turnrl.environments.context import drop_reasoning, edited, keep_last_turns
from turnrl.environments.tasks.arithmetic import question_text
from turnrl.environments.tasks.quiz import (
    RIGHT_TEXT,
    WRONG_TEXT,
    QuizEnvironment,
    make_quiz_scenarios,
)
from turnrl.training.sft import supervised_warmstart
from turnrl.types import Message, Scenario, assistant, user

CONTEXTS = ("template", "drop-reasoning", "keep-last")


def answer_of(reply: str) -> str:
    """What the agent answered: the text after its thinking span.

    A reply with an unclosed `<think>` is all thinking and no answer; one
    without thinking is all answer.

    >>> answer_of("<think>7+5=12</think> 12"), answer_of("<think>7+5"), answer_of("12")
    ('12', '', '12')
    """
    if "</think>" in reply:
        return reply.rsplit("</think>", 1)[1].strip()
    return "" if "<think>" in reply else reply.strip()


class AnswerAfterThinking(turnrl.Wrapper):
    """Show the wrapped environment only the answer of each reply, not the thinking.

    The trajectory keeps the whole reply (the model is trained on what it
    sampled); the task's own checker sees `12` where the agent wrote
    `<think>7+5=12</think>12`.
    """

    async def step(self, message: Message) -> turnrl.StepResult:
        return await self.env.step(edited(message, answer_of(message.content)))


def demonstrations(scenarios: Sequence[Scenario], accuracy: float = 0.5) -> list[list[Message]]:
    """A sloppy teacher who thinks aloud: each sum right with probability `accuracy`, else +10."""
    rng = random.Random(0)
    conversations = []
    for scenario in scenarios:
        questions = scenario.data["questions"]
        conversation = [user(question_text(questions[0]["a"], "+", questions[0]["b"]))]
        for k, q in enumerate(questions):
            right = rng.random() < accuracy
            total = q["a"] + q["b"] + (0 if right else 10)
            conversation.append(assistant(f"<think>{q['a']}+{q['b']}={total}</think>{total}"))
            if k + 1 < len(questions):
                nxt = questions[k + 1]
                verdict = RIGHT_TEXT if right else WRONG_TEXT
                conversation.append(user(f"{verdict} {question_text(nxt['a'], '+', nxt['b'])}"))
        conversations.append(conversation)
    return conversations


def per_turn(conversations: list[list[Message]], view) -> list[list[Message]]:
    """Each reply after the view the agent will be prompted with (for a context policy)."""
    return [
        [*view(c[:i]), c[i]]
        for c in conversations
        for i, m in enumerate(c)
        if m.role == "assistant"
    ]


async def main(
    steps: int,
    warmstart_steps: int,
    output_dir: str,
    context: str = "template",
    *,
    questions: int = 2,
    num_demos: int = 400,
    batch_size: int = 16,
    scenarios_per_step: int = 8,
    num_generations: int = 8,
    held_out_size: int = 100,
) -> dict:
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    # Small sums (a <= 19): a few minutes of demonstrations teach them to the tiny
    # model, and RL then removes the teacher's mistakes.
    scenarios = make_quiz_scenarios(600, questions=questions, high=19, seed=0)
    held_out, train = scenarios[:held_out_size], scenarios[100:]
    template = "reasoning" if context == "template" else "default"
    agent = turnrl.TransformersAgent.from_pretrained(
        tiny_model_path(template=template), sampling=turnrl.SamplingParams(max_new_tokens=32)
    )
    env: turnrl.Environment = AnswerAfterThinking(QuizEnvironment(train))
    demos = demonstrations(train[:num_demos])
    if context == "template":
        # Each demonstrated turn is already prompted as the template renders it
        # (earlier thinking dropped): a whole conversation trains as step-wise rows.
        train_on = "all"
    else:
        # A context policy edits the rollout's messages, not the template: show each
        # demonstrated reply after the view the agent will get, and train on it alone.
        if context == "drop-reasoning":
            env = turnrl.DropReasoning(env, keep_last=0)
            demos = per_turn(demos, lambda m: drop_reasoning(m, keep_last=0))
        else:
            env = turnrl.KeepLastTurns(env, 1)
            demos = per_turn(demos, lambda m: keep_last_turns(m, 1))
        train_on = "last"
    supervised_warmstart(
        agent, demos, steps=warmstart_steps, lr=3e-3, batch_size=batch_size, train_on=train_on
    )

    # The profile's learning rate is for pretrained LLMs; a tiny model trained
    # from scratch wants a larger one.
    config = turnrl.TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 2e-4, "micro_batch_size": 32},
        algorithm={"loss_aggregation": "seq_mean_token_mean"},
        generation={"max_new_tokens": 32},
        rollout={"scenarios_per_step": scenarios_per_step, "num_generations": num_generations},
        eval={"every": 0, "num_generations": 2},
        run={"max_steps": steps, "output_dir": output_dir},
    )
    trainer = turnrl.Trainer(agent, env, None, config, eval_scenarios=held_out)
    print(trainer.template)  # the chat template check: prefix or step-wise, and why
    summary = await trainer.train()
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    metrics = [m for m in map(json.loads, lines) if "train/num_sequences" in m]
    return {
        **summary,
        "num_sequences": sum(m["train/num_sequences"] for m in metrics),
        "num_trajectories": sum(m["train/num_trajectories"] for m in metrics),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmstart-steps", type=int, default=300)
    parser.add_argument("--context", choices=CONTEXTS, default="template")
    parser.add_argument("--questions", type=int, default=2, help="sums per episode")
    parser.add_argument("--output", default="runs/reasoning_agent")
    args = parser.parse_args()
    result = asyncio.run(
        main(args.steps, args.warmstart_steps, args.output, args.context, questions=args.questions)
    )
    print(
        f"held-out reward: {result['eval_before']:.3f} before RL -> "
        f"{result['eval_after']:.3f} after ({result['wall_s']:.0f} s of RL)\n"
        f"trained on {result['num_sequences']:.0f} rows from "
        f"{result['num_trajectories']:.0f} trajectories"
    )
