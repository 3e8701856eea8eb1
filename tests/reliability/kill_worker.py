"""Trains with a checkpoint every step, resuming from the latest one if there is one.

python kill_worker.py RUN_DIR MAX_STEPS
"""

import asyncio
import sys

import torch

from turnrl.agents.engine import SamplingParams
from turnrl.agents.tiny import tiny_model_path
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.checkpoint import latest_checkpoint
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer


def main(run_dir: str, max_steps: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    agent = TransformersAgent.from_pretrained(
        tiny_model_path(), sampling=SamplingParams(max_new_tokens=3)
    )
    config = TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 1e-3, "warmup_steps": 0},
        generation={"max_new_tokens": 3},
        rollout={"scenarios_per_step": 2, "num_generations": 2},
        run={"output_dir": run_dir, "max_steps": max_steps, "checkpoint_every": 1},
    )
    resume = latest_checkpoint(run_dir) is not None
    trainer = Trainer(
        agent, ArithmeticEnvironment(make_scenarios(n=8)), None, config, resume=resume
    )
    print(f"started at step {trainer.step_count}", flush=True)
    asyncio.run(trainer.train())
    print("finished", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
