"""Customer service: a simulated customer, an end-of-conversation judge, weighted rewards.

Three kinds of support request (refund, shipping, account), each with a goal
and a customer. The customer is simulated: a frozen copy of the starting model
playing the scenario's persona (refund, shipping), or a script (account). When
the conversation ends, a rubric judges it:

- rules: did the agent say the goal's keyword ("refund", "tracking",
  "password")? was it polite?
- a model: a frozen judge is asked "Did the agent solve the customer's ...?"
  and its probability of answering "yes" is the score;

and a length penalty is added with its own weight. The policy learns from the
total; every component is logged (``reward/rubric/<item>_mean``) and printed
per step at the end.

The embedded tiny model writes gibberish, and so do the customer and the judge
(they are frozen copies of it). A short supervised warm-start on one
demonstration reply per scenario makes the rule items fire now and then, so
the rewards are not all zero. With a real model, load it instead of
``tiny_model_path()`` (the judge may be a different, larger model).

Run:  python examples/customer_service.py [--steps 5]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import turnrl
from turnrl.agents.tiny import tiny_model_path
from turnrl.environments import AgentUser, ScriptedUser, check_env
from turnrl.environments.conversation import frozen_copy
from turnrl.logging import read_metrics
from turnrl.rewards import combine, length_penalty
from turnrl.rewards.judge import ModelJudge, RubricJudge, mentions
from turnrl.training.sft import supervised_warmstart
from turnrl.types import Message, Scenario, assistant, system, user

AGENT_PROMPT = "You are a support agent. Help the customer in one or two sentences."

# One entry per scenario: what the customer wants, how they open, who plays them
# (a persona for the model, or a script), and one good reply for the warm-start.
CASES = [
    {
        "id": "refund-blender",
        "goal": "refund",
        "keywords": ["refund"],
        "opening": "My blender arrived broken. I want my money back.",
        "persona": "You are an annoyed customer. Your blender arrived broken. Ask for a refund.",
        "demo": "Sorry! Your refund is on its way.",
    },
    {
        "id": "refund-shoes",
        "goal": "refund",
        "keywords": ["refund"],
        "opening": "These shoes are too small. Can I return them?",
        "persona": "You are a polite customer. Your shoes are too small. You want a refund.",
        "demo": "Sorry! Send them back for a refund.",
    },
    {
        "id": "shipping-late",
        "goal": "shipping",
        "keywords": ["tracking"],
        "opening": "Where is my parcel? It is a week late.",
        "persona": "You are a worried customer. Your parcel is a week late. Ask where it is.",
        "demo": "Sorry! Your tracking number is 4512.",
    },
    {
        "id": "shipping-address",
        "goal": "shipping",
        "keywords": ["tracking"],
        "opening": "I moved. Can my order go to my new address?",
        "persona": "You are a busy customer who just moved. You want your order re-routed.",
        "demo": "Sorry! Your new tracking number is 77.",
    },
    {
        "id": "account-login",
        "goal": "account",
        "keywords": ["password"],
        "opening": "I cannot log in to my account.",
        "script": ["I tried that already. What else?"],
        "demo": "Sorry! Please reset your password.",
    },
    {
        "id": "account-locked",
        "goal": "account",
        "keywords": ["password"],
        "opening": "My account says it is locked.",
        "script": ["It still says locked."],
        "demo": "Sorry! Please pick a new password.",
    },
]


def make_scenarios() -> list[Scenario]:
    """One Scenario per case: the agent's prompt, the customer's opening, the rest as data."""
    return [
        Scenario(
            id=case["id"],
            prompt=[system(AGENT_PROMPT), user(case["opening"])],
            data={k: v for k, v in case.items() if k not in ("id", "opening", "demo")},
        )
        for case in CASES
    ]


def demonstrations() -> list[list[Message]]:
    """One good first reply per case, for the supervised warm-start."""
    return [
        [system(AGENT_PROMPT), user(case["opening"]), assistant(case["demo"])] for case in CASES
    ]


class Customer:
    """The simulated customer: the scenario's script if it has one, else the frozen model.

    A SimulatedUser (``async reply(conversation, scenario)``). The model sees the
    conversation from the customer's side, with ``scenario.data["persona"]`` as
    its system prompt (see ``AgentUser``).
    """

    def __init__(self, model: turnrl.Agent) -> None:
        self.model = AgentUser(model)  # refuses a model with trainable weights

    async def reply(self, conversation: Sequence[Message], scenario: Scenario) -> Message | None:
        if "script" in scenario.data:  # the script's end ends the conversation
            return await ScriptedUser(scenario.data["script"]).reply(conversation, scenario)
        return await self.model.reply(conversation, scenario)


def make_rewards(judge_model: turnrl.TransformersAgent) -> turnrl.RewardFunction:
    """The rubric (rules + a model judge) plus a length penalty, with their weights."""
    judge = ModelJudge(
        judge_model,
        "Did the agent solve the customer's {goal} problem?",
        name="judge",
        labels={"user": "Customer", "assistant": "Agent"},
        max_transcript_chars=400,  # the tiny model's context is 1024 characters
    )
    rubric = RubricJudge(
        {
            mentions(lambda s: s.data["keywords"], name="goal_keyword"): 2.0,
            mentions(["sorry", "please", "thank"], name="polite"): 1.0,
            judge: 1.0,
        },
        name="rubric",
    )
    # Rambling costs: beyond 60 tokens in all the agent's turns, -0.5 per 60 more.
    return combine({rubric: 1.0, length_penalty(60, name="length"): 0.5})


COLUMNS = {
    "reward": "rollout/reward_mean",
    "rubric": "reward/rubric_mean",
    "keyword": "reward/rubric/goal_keyword_mean",
    "polite": "reward/rubric/polite_mean",
    "judge": "reward/rubric/judge_mean",
    "length": "reward/length_mean",
}


def print_table(output_dir: str) -> None:
    """One row per step: the total reward and each component's mean (raw, unweighted)."""
    print("  ".join(f"{name:>7}" for name in ["step", *COLUMNS]))
    for record in read_metrics(output_dir):
        if COLUMNS["reward"] in record:
            cells = [f"{record.get(key, float('nan')):>7.3f}" for key in COLUMNS.values()]
            print("  ".join([f"{record['step']:>7}", *cells]))


async def main(steps: int, warmstart_steps: int, output_dir: str) -> dict:
    sampling = turnrl.SamplingParams(max_new_tokens=40)
    agent = turnrl.TransformersAgent.from_pretrained(tiny_model_path(), sampling=sampling)
    # The customer and the judge: one frozen copy of the starting model, taken
    # before any training, with its own weights and generation engine.
    frozen = frozen_copy(agent, sampling=turnrl.SamplingParams(max_new_tokens=24))
    if warmstart_steps:
        supervised_warmstart(agent, demonstrations(), steps=warmstart_steps, lr=3e-3, batch_size=6)

    env = turnrl.ConversationEnvironment(make_scenarios(), Customer(frozen), max_turns=2)
    await check_env(env)  # the contract, checked before any training
    config = turnrl.TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 1e-4, "warmup_steps": 0},
        generation={"max_new_tokens": 40},
        rollout={"scenarios_per_step": 3, "num_generations": 4},
        run={"max_steps": steps, "output_dir": output_dir, "log_every": 5},
    )
    summary = await turnrl.Trainer(agent, env, make_rewards(frozen), config).train()
    print_table(output_dir)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmstart-steps", type=int, default=80)
    parser.add_argument("--output", default="runs/customer-service")
    args = parser.parse_args()
    summary = asyncio.run(main(args.steps, args.warmstart_steps, args.output))
    print(f"trained {summary['steps']} steps in {summary['wall_s']:.1f} s; see {args.output}")
