"""``turnrl demo``: the embedded model learns multi-turn arithmetic on a CPU.

The demo runs the experiment file ``demo.yaml`` next to this module (which
``examples/configs/arithmetic.yaml`` links to) as ``turnrl train`` would, with
the run directory, seed and lengths of the command line, and two departures
from the file: the held-out questions are the first 100 of the shuffled list
(the file picks 100 at random), and no checkpoints are written.

Three phases, each reported on its own:

1. **Warm-start** (supervised) on demonstrations from a sloppy teacher: in 80%
   of them the first answer is off by ten (``a+b+10``), followed by ``Wrong.
   Try again.`` and the right answer (sometimes a second miss, ``+20``,
   first). Every assistant turn is imitated, so the random model learns the
   format, the addition table, and the teacher's habit of needing a second
   try.
2. **Eval before RL** on held-out questions that appear in no demonstration
   and no RL scenario.
3. **RL** with GRPO on the arithmetic environment: a wrong answer earns
   ``Wrong. Try again.`` and another attempt; rewards 1.0 / 0.5 / 0.25 for a
   correct first / second / third answer. The reward, unlike the
   demonstrations, pays for getting it right the first time. Then **eval
   after RL**.

Why this task, this teacher and 360 warm-start steps: docs/design.md ("The
built-in tasks and the demo"); the measurements over seeds are in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import anyio
from transformers.utils import logging as hf_logging

from turnrl.cli.train import run_experiment
from turnrl.experiment.build import build_experiment, build_scenarios
from turnrl.experiment.config import ExperimentConfig, load_experiment
from turnrl.logging import configure_logging
from turnrl.training.config import TrainingConfig
from turnrl.training.distributed import seed_everything
from turnrl.training.rundir import preflight
from turnrl.types import Scenario

DEMO_FILE = Path(__file__).with_name("demo.yaml")

# Where the demo departs from its file: hold out the first questions (the
# generator shuffled them already), and keep no checkpoints.
DEPARTURES = ("scenarios.split_seed=null", "run.checkpoint_every=0")


def demo_experiment(
    output_dir: str | Path = "runs/demo",
    *,
    warmstart_steps: int | None = None,
    rl_steps: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> ExperimentConfig:
    """The demo's experiment: ``demo.yaml`` with this run's directory, seed and lengths.

    Args:
        output_dir: The run directory.
        warmstart_steps: Supervised steps (None: the file's; 0: no warm-start).
        rl_steps: GRPO steps (None: the file's ``run.max_steps``).
        seed: Seed of the questions, the demonstrations and training.
        overwrite: Replace a previous run in ``output_dir``.
    """
    data = load_experiment(DEMO_FILE, overrides=DEPARTURES).model_dump()
    data["run"] |= {"output_dir": str(output_dir), "seed": seed, "overwrite": overwrite}
    data["scenarios"]["train"]["args"]["seed"] = seed
    data["warmstart"]["demonstrations"]["args"]["seed"] = seed
    if rl_steps is not None:
        data["run"]["max_steps"] = rl_steps
    if warmstart_steps == 0:
        data["warmstart"] = None
    elif warmstart_steps is not None:
        data["warmstart"]["steps"] = warmstart_steps
    return ExperimentConfig.model_validate(data)


def demo_scenarios(seed: int = 0) -> tuple[list[Scenario], list[Scenario]]:
    """``(held_out, train)``: the demo's 100 held-out questions and the others."""
    train, held_out = build_scenarios(demo_experiment(seed=seed).scenarios)
    return held_out, train


def demo_config(output_dir: str | Path, *, rl_steps: int, seed: int) -> TrainingConfig:
    """The demo's training settings (those of ``demo.yaml``) for a script's own Trainer."""
    return demo_experiment(output_dir, rl_steps=rl_steps, seed=seed).training_config()


async def run_demo(config: ExperimentConfig | None = None) -> dict[str, Any]:
    """Warm-start, evaluate, train with RL, evaluate again.

    Args:
        config: The demo's experiment (default: :func:`demo_experiment`'s).

    Returns:
        ``eval_before``, ``eval_after``, ``gain`` and the wall time of each phase.

    Raises:
        RunDirError: The run directory holds a run and ``run.overwrite`` is not
            set (checked before the warm-start).
    """
    config = demo_experiment() if config is None else config
    run = config.run
    preflight(run.output_dir, resume=False, overwrite=run.overwrite)
    started = time.perf_counter()
    seed_everything(run.seed)
    result = await run_experiment(build_experiment(config))
    before, after = result["eval_before"], result["eval_after"]
    return {
        "eval_before": before,
        "eval_after": after,
        "gain": None if before is None or after is None else after - before,
        "warmstart_s": result["warmstart_s"],
        "rl_s": result["wall_s"],
        "total_s": time.perf_counter() - started,
        "run_dir": result["run_dir"],
    }


def command(args: argparse.Namespace) -> int:
    """``turnrl demo``: run the demo and print the held-out reward before and after RL."""
    configure_logging(args.log_level)
    hf_logging.disable_progress_bar()  # weight-loading bars drown the step lines
    print(
        "turnrl demo: a 3.4M-parameter Llama learns multi-turn arithmetic.\n"
        "  phase 1: supervised warm-start on a sloppy teacher's demonstrations\n"
        "           (first answers usually off by ten, then a retry)\n"
        "  phase 2: GRPO on 'What is a+b?' with retries after 'Wrong. Try again.';\n"
        "           the reward pays most for a right first answer\n"
        "  eval: held-out questions (in no demonstration and no RL scenario)\n",
        flush=True,
    )
    lengths = {"warmstart_steps": args.warmstart_steps, "rl_steps": args.steps}
    config = demo_experiment(args.output, seed=args.seed, overwrite=args.overwrite, **lengths)
    result = anyio.run(run_demo, config)
    if result["gain"] is None:
        print("\nno held-out reward: every evaluation episode failed (see the log above)")
        return 1
    print()
    print(f"  held-out reward before RL : {result['eval_before']:.3f}")
    print(f"  held-out reward after RL  : {result['eval_after']:.3f}")
    print(f"  gain                      : {result['gain']:+.3f}")
    print(
        f"  wall time                 : {result['total_s']:.0f} s "
        f"(warm-start {result['warmstart_s']:.0f} s, RL with evals {result['rl_s']:.0f} s)"
    )
    print(f"  run directory             : {result['run_dir']}")
    return 0
