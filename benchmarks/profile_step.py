"""Where an RL step's time goes: generation, log-prob forwards, backward, optimizer, the rest.

Runs demo-like GRPO steps (the warm-started embedded model from the demo's
supervised phase, cached like ``benchmarks/estimators.py`` does; B = 16 x G = 8;
micro-batches of 32) under ``torch.profiler`` and adds up the time spent inside
the ``record_function`` ranges turnrl marks:

- generation: the GenerationEngine's batched ``generate`` calls (they run in a
  worker thread, which the profiler does not see; the engine times them);
- ``turnrl/ref_forward``: the reference model's no-grad forward;
- ``turnrl/policy_forward``: the policy's forward with gradients;
- ``turnrl/backward``, ``turnrl/optimizer_step``.

Everything else in the step (environments, tokenizing, the event loop, batch
building, estimators) is reported as framework overhead.

    python benchmarks/profile_step.py --steps 5
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.cli.demo import demo_config, demo_scenarios
from turnrl.environments.tasks import ArithmeticEnvironment
from turnrl.training.trainer import Trainer

LABELS = (
    "turnrl/ref_forward",
    "turnrl/policy_forward",
    "turnrl/backward",
    "turnrl/optimizer_step",
)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    start = _warm_start(Path(args.cache), args.warmstart_steps)
    _, train = demo_scenarios(0)
    agent = TransformersAgent.from_pretrained(start, sampling=SamplingParams(max_new_tokens=6))
    config = demo_config(args.output, rl_steps=args.steps + 1, seed=0)
    trainer = Trainer(agent, ArithmeticEnvironment(train), None, config)
    asyncio.run(trainer.step())  # warm-up step, not profiled
    generate0 = agent.engine.stats.generate_s
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            asyncio.run(trainer.step())
        total = time.perf_counter() - t0
    spent = {"turnrl/generate": agent.engine.stats.generate_s - generate0}
    spent |= {label: 0.0 for label in LABELS}
    for event in prof.key_averages():
        if event.key in spent:
            spent[event.key] = event.cpu_time_total / 1e6  # microseconds -> seconds
    print(f"{args.steps} steps, {total / args.steps:.2f} s per step (under the profiler)")
    print("| phase | s per step | share |")
    print("|---|---|---|")
    for label, seconds in spent.items():
        print(
            f"| {label.removeprefix('turnrl/')} | {seconds / args.steps:.2f} "
            f"| {seconds / total:.0%} |"
        )
    rest = total - sum(spent.values())
    print(f"| framework overhead (the rest) | {rest / args.steps:.2f} | {rest / total:.0%} |")


def _warm_start(cache: Path, steps: int) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "estimators", Path(__file__).with_name("estimators.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.warm_start(cache, steps)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmstart-steps", type=int, default=260)
    parser.add_argument("--cache", default="runs/estimators-cache")
    parser.add_argument("--output", default="runs/profile")
    run(parser.parse_args())
