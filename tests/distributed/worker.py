"""A training script run by the distributed tests, with or without torchrun.

    python worker.py equivalence GROUPS.jsonl OUT_DIR VARIANT...
    python worker.py train RUN_DIR
    python worker.py fail RUN_DIR

``equivalence`` takes, for each variant (an estimator, or ``estimator-scale``
for ``scale_rewards=scale``, e.g. ``grpo-batch``), one SGD step (lr 1, no
clipping) from the same start on the groups in GROUPS.jsonl, split evenly over
the ranks, and rank 0 saves the parameter change to OUT_DIR/VARIANT.safetensors.
All variants run in one process (one start-up, one process group). ``train``
runs two steps of the arithmetic task. ``fail`` raises on rank 1 in the second
step.
"""

from __future__ import annotations

import asyncio
import os
import sys

import torch
from safetensors.torch import save_file
from torch.distributed.elastic.multiprocessing.errors import record

import turnrl
from turnrl.agents.tiny import tiny_model_path
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.distributed import context_from_env, init_process_group, shutdown
from turnrl.training.optim import Optimization
from turnrl.types import TrajectoryGroup, load_jsonl


def make_trainer(
    run_dir: str,
    estimator: str = "grpo",
    scenarios_per_step: int = 4,
    scale_rewards: str | None = None,
):
    torch.manual_seed(0)
    agent = turnrl.TransformersAgent.from_pretrained(
        tiny_model_path(), sampling=turnrl.SamplingParams(max_new_tokens=4)
    )
    algorithm = {"estimator": estimator, "beta": 0.5 if estimator == "gvpo" else 0.1}
    if scale_rewards is not None:
        algorithm["scale_rewards"] = scale_rewards
    config = turnrl.TrainingConfig.from_profile(
        "balanced",
        algorithm=algorithm,
        optim={"lr": 1e-3, "max_grad_norm": None, "warmup_steps": 0, "micro_batch_size": 3},
        generation={"max_new_tokens": 4},
        rollout={"scenarios_per_step": scenarios_per_step, "num_generations": 4},
        run={"output_dir": run_dir, "max_steps": 2},
        eval={"every": 0, "num_generations": 2},
    )
    env = ArithmeticEnvironment(make_scenarios(n=8))
    return turnrl.Trainer(agent, env, None, config, eval_scenarios=make_scenarios(n=4, seed=5))


async def equivalence(groups_path: str, out_dir: str, *variants: str) -> None:
    init_process_group(context_from_env())  # joined once: the trainers below share it
    for variant in variants:
        await equivalence_step(groups_path, out_dir, variant)
    shutdown()


async def equivalence_step(groups_path: str, out_dir: str, variant: str) -> None:
    estimator, _, scale = variant.partition("-")
    trainer = make_trainer(f"{out_dir}/run-{variant}", estimator, scale_rewards=scale or None)
    sgd = torch.optim.SGD(trainer.policy.parameters(), lr=1.0)
    trainer.optim = Optimization(
        sgd,
        torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: 1.0),
        torch.amp.GradScaler("cuda", enabled=False),
    )
    trajectories = load_jsonl(groups_path)
    groups = [
        TrajectoryGroup(scenario=trajectories[i].scenario, trajectories=trajectories[i : i + 4])
        for i in range(0, len(trajectories), 4)
    ]
    mine = groups[trainer.dist.rank :: trainer.dist.world_size]
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    await trainer.step(mine)
    if trainer.dist.is_main:
        delta = {
            n: (p.detach() - before[n]).contiguous() for n, p in trainer.policy.named_parameters()
        }
        save_file(delta, os.path.join(out_dir, f"{variant}.safetensors"))
    trainer.close()


async def train(run_dir: str, fail: bool) -> None:
    trainer = make_trainer(run_dir)
    if fail and trainer.dist.rank == 1:
        original = trainer.step

        async def failing_step(groups=None):
            if trainer.step_count == 1:
                raise RuntimeError("rank 1 fails on purpose in step 2")
            return await original(groups)

        trainer.step = failing_step
    await trainer.train()


@record
def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "equivalence":
        asyncio.run(equivalence(*args))
    else:
        asyncio.run(train(args[0], fail=mode == "fail"))


if __name__ == "__main__":
    main()
