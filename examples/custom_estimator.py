"""Bring your own advantage estimator: a group-median baseline, trained on arithmetic.

An estimator is any callable ``(batch, values=None) -> advantages (N, T)``:
``batch`` is a :class:`turnrl.training.batch.RolloutBatch` (``rewards`` (N,),
``group_ids`` (N,), ``loss_mask`` (N, T), ``token_rewards`` (N, T), ...), and
the result gives every sampled token its advantage (0 elsewhere). Pass it to
the Trainer (``estimator=``), or name a factory ``(AlgorithmConfig) ->
estimator`` in the config as ``algorithm.estimator: "mypackage.module:factory"``.
The policy loss is PPO-clip with the config's clipping, aggregation and KL.

Run:  python examples/custom_estimator.py [--steps 5]
"""

from __future__ import annotations

import argparse
import asyncio

import torch

import turnrl
from turnrl.agents.tiny import tiny_model_path
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.rewards import regex_format
from turnrl.training.advantages import per_token
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import AlgorithmConfig


def median_baseline(batch: RolloutBatch, values: torch.Tensor | None = None) -> torch.Tensor:
    """Reward minus the group's median reward: robust to one lucky outlier per group."""
    advantages = torch.empty_like(batch.rewards)
    for group in batch.group_ids.unique():
        members = batch.group_ids == group
        advantages[members] = batch.rewards[members] - batch.rewards[members].median()
    return per_token(advantages, batch.loss_mask)  # (N,) -> (N, T)


def make_median_baseline(config: AlgorithmConfig):
    """The factory form, for ``algorithm.estimator: "mypackage.estimators:make_median_baseline"``
    when this file is part of an importable package."""
    return median_baseline


async def main(steps: int, output_dir: str) -> dict:
    agent = turnrl.TransformersAgent.from_pretrained(
        tiny_model_path(), sampling=turnrl.SamplingParams(max_new_tokens=4)
    )
    config = turnrl.TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 1e-3},
        generation={"max_new_tokens": 4},
        rollout={"scenarios_per_step": 4, "num_generations": 4},
        run={"max_steps": steps, "output_dir": output_dir},
    )
    trainer = turnrl.Trainer(
        agent,
        ArithmeticEnvironment(make_scenarios(n=16)),
        {regex_format(r"\s*\d+\s*"): 1.0},
        config,
        estimator=median_baseline,
    )
    return await trainer.train()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--output", default="runs/custom_estimator")
    args = parser.parse_args()
    summary = asyncio.run(main(args.steps, args.output))
    print(f"{summary['steps']} steps in {summary['wall_s']:.0f} s; metrics in {args.output}")
