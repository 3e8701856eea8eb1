"""DDP on one machine: 1 process with 4 groups per step vs 2 processes with 2 each (issue 5).

Both train the demo's warm-started model (cached like ``benchmarks/estimators.py``)
on the arithmetic task with G = 8, the same total work per step (4 scenarios x 8
episodes), for ``--steps`` steps after one warm-up step. The single process gets
both cores (2 threads); under ``torchrun --nproc_per_node 2`` each process gets
one (gloo on CPU). Reports steps per second, median over ``--repeats`` runs,
alternating the two.

    python benchmarks/ddp_scaling.py --steps 10 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def child(args: argparse.Namespace) -> None:
    """One run (a single process, or one rank under torchrun); rank 0 prints the result."""
    import torch

    from turnrl.agents.engine import SamplingParams
    from turnrl.agents.transformers import TransformersAgent
    from turnrl.cli.demo import demo_config, demo_scenarios
    from turnrl.environments.tasks import ArithmeticEnvironment
    from turnrl.training.trainer import Trainer

    torch.set_num_threads(args.threads)
    _, train = demo_scenarios(0)
    agent = TransformersAgent.from_pretrained(args.model, sampling=SamplingParams(max_new_tokens=6))
    config = demo_config(tempfile.mkdtemp(prefix="ddp-bench-"), rl_steps=args.steps + 1, seed=0)
    config = config.model_copy(
        update={"rollout": config.rollout.model_copy(update={"scenarios_per_step": 4})}
    )
    trainer = Trainer(agent, ArithmeticEnvironment(train), None, config)

    async def go() -> float:
        await trainer.step()  # warm-up
        start = time.perf_counter()
        for _ in range(args.steps):
            await trainer.step()
        return time.perf_counter() - start

    seconds = asyncio.run(go())
    if trainer.dist.is_main:
        print(json.dumps({"steps_per_s": args.steps / seconds, "world": trainer.dist.world_size}))


def launch(nproc: int, args: argparse.Namespace) -> float:
    threads = 2 // nproc
    command = [sys.executable]
    if nproc > 1:
        command += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += [str(HERE), "--child", f"--steps={args.steps}", f"--threads={threads}"]
    command += [f"--model={args.model}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("{"))
    return json.loads(line)["steps_per_s"]


def main(args: argparse.Namespace) -> None:
    if args.model is None:
        sys.path.insert(0, str(HERE.parent))
        from estimators import warm_start

        args.model = str(warm_start(Path(args.cache), 260))
    results: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for nproc in (1, 2):
            results[nproc].append(launch(nproc, args))
            print(f"{nproc} process(es): {results[nproc][-1]:.3f} steps/s", flush=True)
    one, two = statistics.median(results[1]), statistics.median(results[2])
    print("| setup | steps/s (median) |")
    print("|---|---|")
    print(f"| 1 process, 4 groups per step, 2 threads | {one:.3f} |")
    print(f"| 2 processes (gloo), 2 groups each, 1 thread each | {two:.3f} |")
    print(f"| ratio 2 processes / 1 | {two / one:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="start model (default: demo warm-start)")
    parser.add_argument("--cache", default="runs/estimators-cache")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments)
    else:
        main(arguments)
