"""Train the embedded model on multi-turn arithmetic: the demo, as a script to copy.

Phase 1 warm-starts the random model on a sloppy teacher's demonstrations;
phase 2 runs GRPO on "What is a+b?" where a wrong answer earns "Wrong. Try
again." and another try.
Held-out questions (in no demonstration and no RL scenario) measure progress.

Run:  python examples/train_arithmetic.py [--steps 90] [--warmstart-steps 360]
"""

from __future__ import annotations

import argparse
import asyncio

import turnrl
from turnrl.agents.tiny import tiny_model_path
from turnrl.environments.tasks import ArithmeticEnvironment, demonstrations, make_scenarios
from turnrl.training.sft import supervised_warmstart


async def main(steps: int, warmstart_steps: int, output_dir: str) -> dict:
    scenarios = make_scenarios(low=0, high=99, b_range=(0, 9), ops=("+",), seed=0)
    held_out, train = scenarios[:100], scenarios[100:]
    agent = turnrl.TransformersAgent.from_pretrained(
        tiny_model_path(), sampling=turnrl.SamplingParams(max_new_tokens=6)
    )

    # Phase 1: supervised warm-start on demonstrations (never the held-out questions)
    # from a sloppy teacher: 80% of them answer a+b+10 first, hear "Wrong. Try
    # again." and then answer right. Imitating every turn, the model learns the
    # sums and the habit of needing a retry.
    demos = demonstrations(train, retry_fraction=0.8, mistake="plus_ten")
    supervised_warmstart(agent, demos, steps=warmstart_steps, lr=2e-3, batch_size=64)

    # Phase 2: GRPO. The environment pays 1.0 for a right first answer and 0.5 for
    # a right second one, so RL teaches what imitation could not: answer right away.
    # The profile's learning rate is for pretrained LLMs; a tiny model trained
    # from scratch wants a larger one.
    config = turnrl.TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 2e-4, "micro_batch_size": 32, "warmup_steps": 10},
        algorithm={"beta": 0.04, "loss_aggregation": "seq_mean_token_mean"},
        generation={"max_new_tokens": 6},
        rollout={"scenarios_per_step": 16, "num_generations": 8},
        eval={"every": 20, "num_generations": 4},
        run={"max_steps": steps, "output_dir": output_dir},
    )
    trainer = turnrl.Trainer(
        agent, ArithmeticEnvironment(train), None, config, eval_scenarios=held_out
    )
    return await trainer.train()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--warmstart-steps", type=int, default=360)
    parser.add_argument("--output", default="runs/arithmetic")
    args = parser.parse_args()
    result = asyncio.run(main(args.steps, args.warmstart_steps, args.output))
    print(
        f"held-out reward: {result['eval_before']:.3f} before RL -> "
        f"{result['eval_after']:.3f} after ({result['wall_s']:.0f} s of RL)"
    )
