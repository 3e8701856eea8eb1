"""A user-written multi-turn game, trained with turnrl.

"Guess the number": the environment holds a secret number from 1 to 20; the
agent guesses, and hears "Higher." or "Lower." until it finds it or runs out
of guesses. Finding it on guess k of 5 earns 1 - 0.2 * (k - 1); the fifth wrong
guess ends the game (a rule of the game, so the episode is terminated, not
truncated: nothing lies beyond it to bootstrap from).

Run:  python examples/custom_environment.py [--steps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import re

import turnrl
from turnrl.agents.tiny import tiny_model_path
from turnrl.environments import check_env
from turnrl.rewards import regex_format
from turnrl.types import Scenario, user


class GuessTheNumber(turnrl.Environment):
    """The agent guesses a secret number; the environment says higher or lower."""

    def __init__(self, scenarios: list[Scenario], guesses: int = 5) -> None:
        self.scenarios, self.guesses = scenarios, guesses
        self.secret = 0
        self.turn = 0

    async def reset(self, *, seed=None, options=None):
        scenario = options["scenario"]
        self.secret, self.turn = scenario.data["secret"], 0
        return [user("I picked a number from 1 to 20. Guess it!")], {"secret": self.secret}

    async def step(self, message):
        self.turn += 1
        match = re.search(r"\d+", message.content)
        guess = int(match.group()) if match else None
        if guess == self.secret:  # found it: the game is over (terminated)
            return turnrl.StepResult([], 1.0 - 0.2 * (self.turn - 1), True, False, {"found": True})
        if self.turn == self.guesses:  # out of guesses: also the game's own end
            return turnrl.StepResult([], 0.0, True, False, {"found": False})
        hint = (
            "Say a number." if guess is None else ("Higher." if guess < self.secret else "Lower.")
        )
        return turnrl.StepResult([user(hint)], 0.0, False, False, {"found": False})


async def main(steps: int, output_dir: str) -> dict:
    scenarios = [Scenario(id=f"secret-{n}", data={"secret": n}) for n in range(1, 21)]
    env = GuessTheNumber(scenarios)
    print(await check_env(env))  # the contract, checked before any training

    agent = turnrl.TransformersAgent.from_pretrained(tiny_model_path())
    config = turnrl.TrainingConfig.from_profile(
        "balanced",  # lr: auto, from the model's size
        generation={"max_new_tokens": 4},
        rollout={"scenarios_per_step": 4, "num_generations": 4},
        run={"max_steps": steps, "output_dir": output_dir},
    )
    # Environment rewards count as they are; a digits-only format bonus is added.
    rewards = {regex_format(r"\s*\d+\s*", name="says_a_number"): 0.2}
    trainer = turnrl.Trainer(agent, env, rewards, config)
    return await trainer.train()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--output", default="runs/guess-the-number")
    args = parser.parse_args()
    summary = asyncio.run(main(args.steps, args.output))
    print(f"trained {summary['steps']} steps in {summary['wall_s']:.1f} s; see {args.output}")
