"""The demo: the embedded model learns multi-turn arithmetic on a CPU.

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

The task is ``a+b`` with ``a`` in 0..99 and ``b`` in 0..9: the units table is
shared by every tens digit, so what RL teaches on the training questions
carries over to the held-out ones instead of being memorized per question.

Why a sloppy teacher: imitating correct demonstrations, the model's held-out
reward jumps from below 0.1 to 0.6-0.8 somewhere between warm-start steps 200
and 330 (a sharp transition whose position moves with the seed and the data),
which leaves RL either no signal or little room; 120 GRPO steps from 0.65
gained +0.13 (benchmarks/RESULTS.md, "Demo"). The teacher's habit is
what imitation learns and what the reward corrects: RL's job here is to turn
a policy that needs retries into one that answers right away, a multi-turn
credit-assignment lesson, measured on questions it never trained on.

Why 360 warm-start steps: the imitation has a knife edge whose place moves
with the seed and with float rounding; 360 steps leave a margin past it
(the measurements over seeds are in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog

from turnrl.agents.engine import SamplingParams
from turnrl.agents.tiny import tiny_model_path
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, demonstrations, make_scenarios
from turnrl.rewards import regex_format
from turnrl.training.config import TrainingConfig
from turnrl.training.rundir import preflight
from turnrl.training.sft import supervised_warmstart
from turnrl.training.trainer import Trainer, seed_everything
from turnrl.types import Scenario

log = structlog.get_logger(__name__)

NUM_EVAL = 100


def demo_scenarios(seed: int = 0) -> tuple[list[Scenario], list[Scenario]]:
    """``(held_out, train)``: 100 held-out questions and the 900 others."""
    scenarios = make_scenarios(low=0, high=99, b_range=(0, 9), ops=("+",), seed=seed)
    return scenarios[:NUM_EVAL], scenarios[NUM_EVAL:]


def demo_config(output_dir: str | Path, *, rl_steps: int, seed: int) -> TrainingConfig:
    """The demo's training settings: the balanced profile, scaled for a tiny model."""
    return TrainingConfig.from_profile(
        "balanced",
        # lr 3e-4 drifts away within a few steps; 2e-4 with a short warmup and the
        # cosine decay is the fastest stable setting measured (benchmarks/RESULTS.md).
        optim={"lr": 2e-4, "micro_batch_size": 32, "warmup_steps": 10},
        # Failed multi-turn episodes are 2-3x longer than successes; per-trajectory
        # averaging keeps them from dominating the update.
        algorithm={"beta": 0.04, "loss_aggregation": "seq_mean_token_mean"},
        generation={"max_new_tokens": 6},
        rollout={"scenarios_per_step": 16, "num_generations": 8},
        eval={"every": 20, "num_generations": 4},
        run={"max_steps": rl_steps, "output_dir": str(output_dir), "seed": seed},
    )


async def run_demo(
    output_dir: str | Path = "runs/demo",
    *,
    warmstart_steps: int = 360,
    rl_steps: int = 90,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Warm-start, evaluate, train with RL, evaluate again.

    Args:
        output_dir: The run directory (metrics.jsonl, config.json, final model).
        warmstart_steps: Supervised steps before RL.
        rl_steps: GRPO steps.
        seed: Seed for everything.
        overwrite: Replace a previous run in ``output_dir`` (else it is refused
            before the warm-start).

    Returns:
        ``eval_before``, ``eval_after``, ``gain`` and the wall time of each phase.
    """
    preflight(output_dir, resume=False, overwrite=overwrite)
    started = time.perf_counter()
    seed_everything(seed)
    eval_scenarios, train_scenarios = demo_scenarios(seed)
    agent = TransformersAgent.from_pretrained(
        tiny_model_path(), sampling=SamplingParams(max_new_tokens=6)
    )

    log.info("phase", name="warm-start", demonstrations=len(train_scenarios), steps=warmstart_steps)
    t0 = time.perf_counter()
    losses = supervised_warmstart(
        agent,
        demonstrations(train_scenarios, retry_fraction=0.8, mistake="plus_ten", seed=seed),
        steps=warmstart_steps,
        lr=2e-3,
        batch_size=64,
        seed=seed,
        log_every=100,
        train_on="all",
    )
    warmstart_s = time.perf_counter() - t0

    log.info("phase", name="rl", scenarios=len(train_scenarios), held_out=len(eval_scenarios))
    config = demo_config(output_dir, rl_steps=rl_steps, seed=seed)
    config.run.overwrite = overwrite
    # The format component has weight 0: logged as a metric, not trained on.
    rewards = {regex_format(r"\s*-?\d+\s*"): 0.0}
    trainer = Trainer(
        agent,
        ArithmeticEnvironment(train_scenarios),
        rewards,
        config,
        eval_scenarios=eval_scenarios,
    )
    summary = await trainer.train()
    before, after = summary["eval_before"], summary["eval_after"]
    return {
        "eval_before": before,
        "eval_after": after,
        "gain": None if before is None or after is None else after - before,
        "warmstart_final_loss": losses[-1],
        "warmstart_s": warmstart_s,
        "rl_s": summary["wall_s"],
        "total_s": time.perf_counter() - started,
        "run_dir": str(trainer.run_dir),
    }
