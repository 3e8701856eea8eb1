"""Seconds per demo RL step from a given model, for the turnrl that Python imports.

Compare two versions side by side by pointing ``PYTHONPATH`` at each checkout in
turn (``git worktree add /tmp/old REV``), alternating runs on one machine:

    PYTHONPATH=/tmp/old python benchmarks/step_time.py MODEL --label old
    PYTHONPATH=.        python benchmarks/step_time.py MODEL --label new

MODEL is a local model directory, e.g. a demo run's ``final/``. One warm-up step
is not timed; the demo's settings (B = 16 x G = 8, reference model) apply.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.cli.demo import demo_config, demo_scenarios
from turnrl.environments.tasks import ArithmeticEnvironment
from turnrl.rewards import regex_format
from turnrl.training.distributed import seed_everything
from turnrl.training.trainer import Trainer


async def main(args: argparse.Namespace) -> None:
    seed_everything(0)
    _, train = demo_scenarios(0)
    agent = TransformersAgent.from_pretrained(args.model, sampling=SamplingParams(6))
    out = tempfile.mkdtemp()
    shutil.rmtree(out)  # a fresh run directory that does not exist yet
    config = demo_config(out, rl_steps=args.steps + 1, seed=0)
    rewards = {regex_format(r"\s*-?\d+\s*"): 0.0}
    trainer = Trainer(agent, ArithmeticEnvironment(train), rewards, config)
    await trainer.step()  # warm-up
    started, rollout, update = time.perf_counter(), 0.0, 0.0
    for _ in range(args.steps):
        metrics = await trainer.step()
        rollout += metrics["perf/rollout_s"]
        update += metrics["perf/update_s"]
    n = args.steps
    print(
        f"{args.label} step {(time.perf_counter() - started) / n:.3f} s "
        f"(rollout {rollout / n:.3f}, update {update / n:.3f})"
    )
    trainer.close()
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local model directory")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default: 10)")
    parser.add_argument("--label", default="", help="printed first on the result line")
    asyncio.run(main(parser.parse_args()))
