"""What a mismatch correction costs: the trainer's own forward pass before the update.

Without a correction the mismatch is measured from the update's own forwards (free);
with one (``tis`` or ``mis``) the trainer scores the batch before the update, one more
no-gradient forward. One rollout of the demo's settings (B = 16 x G = 8, the embedded
tiny model unless a model directory is given) is collected once; then the batch
preparation (build, and the no-gradient forwards of ``logprobs_and_values``) is timed
with ``mismatch.correction`` none and tis, alternating, and set against a whole step:

    PYTHONPATH=. python benchmarks/mismatch_cost.py [MODEL] [--repeats 10] [--beta 0]

With ``--beta 0`` no reference model is loaded, so without a correction no forward
runs at all before the update; with the demo's beta the reference forward runs anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time

from turnrl.agents.engine import SamplingParams
from turnrl.agents.tiny import tiny_model_path
from turnrl.agents.transformers import TransformersAgent
from turnrl.cli.demo import demo_config, demo_scenarios
from turnrl.environments.tasks import ArithmeticEnvironment
from turnrl.rewards import regex_format
from turnrl.training.distributed import seed_everything
from turnrl.training.trainer import Trainer


def _timed(trainer: Trainer, groups: list, correction: str) -> float:
    trainer.config.mismatch.correction = correction
    started = time.perf_counter()
    trainer.prepare_batch(groups)
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    seed_everything(0)
    _, train = demo_scenarios(0)
    agent = TransformersAgent.from_pretrained(args.model, sampling=SamplingParams(6))
    out = tempfile.mkdtemp()
    shutil.rmtree(out)  # a fresh run directory that does not exist yet
    config = demo_config(out, rl_steps=10, seed=0)
    if args.beta is not None:
        config.algorithm.beta = args.beta
    rewards = {regex_format(r"\s*-?\d+\s*"): 0.0}
    trainer = Trainer(agent, ArithmeticEnvironment(train), rewards, config)
    await trainer.step()  # warm-up
    started = time.perf_counter()
    await trainer.step()
    step_s = time.perf_counter() - started
    groups = await trainer.collect_groups()
    off, on = [], []
    for _ in range(args.repeats):
        off.append(_timed(trainer, groups, "none"))
        on.append(_timed(trainer, groups, "tis"))
    off_s, on_s = statistics.median(off), statistics.median(on)
    tokens = trainer.prepare_batch(groups).num_tokens
    print(
        f"beta {trainer.config.algorithm.beta}: {len(groups)} groups, {tokens} sampled tokens; "
        f"prepare_batch median {off_s:.3f} s without, {on_s:.3f} s with a correction "
        f"(+{on_s - off_s:.3f} s); a whole step {step_s:.3f} s, so "
        f"+{100 * (on_s - off_s) / step_s:.1f}% per step"
    )
    trainer.close()
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None, help="a local model directory")
    parser.add_argument("--repeats", type=int, default=10, help="timed pairs (default: 10)")
    parser.add_argument("--beta", type=float, default=None, help="override algorithm.beta")
    parsed = parser.parse_args()
    parsed.model = parsed.model or str(tiny_model_path())
    asyncio.run(main(parsed))
