"""GVPO on a mixed batch: fresh rollouts plus replayed and demonstration groups.

GVPO (Zhang et al. 2025, arXiv 2504.19599) is derived for responses drawn from
any distribution, so a step can mix groups the current policy just sampled
with groups from elsewhere: here, the most informative groups of earlier steps
(a small replay buffer) and hand-written demonstrations built from plain
``(prompt, completions, rewards)`` records. ``await trainer.step(groups)``
scores all their tokens under the current policy and updates.

Run:  python examples/off_policy_groups.py [--steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import turnrl
from turnrl.agents.tiny import tiny_model_path
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.offline import groups_from_completions

# Demonstrations: a question, several answers, and the reward each deserves.
DEMONSTRATIONS = [
    ("What is 12+5?", ["17", "16", "71"], [1.0, 0.0, 0.0]),
    ("What is 40+7?", ["47", "4", "48"], [1.0, 0.0, 0.0]),
]


async def main(steps: int, output_dir: str) -> list[dict]:
    agent = turnrl.TransformersAgent.from_pretrained(
        tiny_model_path(), sampling=turnrl.SamplingParams(max_new_tokens=4)
    )
    config = turnrl.TrainingConfig.from_profile(
        "balanced",
        algorithm={"estimator": "gvpo", "beta": 0.5},
        optim={"lr": 1e-3, "warmup_steps": 0},
        generation={"max_new_tokens": 4},
        rollout={"scenarios_per_step": 4, "num_generations": 4},
        run={"max_steps": steps, "output_dir": output_dir},
    )
    trainer = turnrl.Trainer(agent, ArithmeticEnvironment(make_scenarios(n=16)), None, config)
    demos = groups_from_completions(agent, DEMONSTRATIONS)
    replay: list[turnrl.TrajectoryGroup] = []
    history = []
    for _ in range(steps):
        fresh = await trainer.collect_groups()
        metrics = await trainer.step(fresh + replay[-2:] + demos)
        history.append(metrics)
        # Keep the groups whose rewards differ most: they carry the most signal.
        spread = [g for g in fresh if len(g.ok) > 1]
        spread.sort(key=lambda g: statistics.pstdev(t.reward or 0.0 for t in g.ok))
        replay.extend(spread[-1:])
        print(
            f"step {trainer.step_count}: {int(metrics['train/num_sequences'])} sequences "
            f"({len(fresh)} fresh groups + {min(len(replay) - 1, 2)} replayed + {len(demos)} "
            f"demonstrations), loss {metrics['loss/policy']:.4f}"
        )
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output", default="runs/off_policy")
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.output))
