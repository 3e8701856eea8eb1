"""The sections of a TrainingConfig around the training itself: evaluation, the run, wandb,
and the rollout/trainer mismatch correction.

Split from :mod:`turnrl.training.config_sections` (the model, generation,
rollout, algorithm and optimizer sections), with the same :class:`Section`
rules; :mod:`turnrl.training.config` assembles both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from turnrl.training.config_sections import Section


class EvalConfig(Section):
    """Periodic evaluation on held-out scenarios."""

    every: int = Field(10, ge=0, description="Evaluate every N steps (0: only before/after).")
    num_generations: int = Field(4, ge=1, description="Samples per held-out scenario.")
    temperature: float = Field(
        1.0, ge=0, description="Eval sampling temperature (0: greedy, then one sample suffices)."
    )
    max_scenarios: int | None = Field(None, ge=1, description="Cap on held-out scenarios used.")
    metric: str = Field(
        "reward_mean",
        min_length=1,
        description="The eval metric train() reports as eval_before/eval_after and that "
        "early stopping and keep_best compare, named without 'eval/': reward_mean (the "
        "environment's reward plus the weighted reward functions), reward/env_return (the "
        "environment's own), reward/<name> (one reward function's raw score), turns_mean...",
    )
    mode: Literal["max", "min"] = Field(
        "max", description="Whether a larger (max) or smaller (min) eval.metric is better."
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="Stop training after this many evaluations in a row that do not improve "
        "eval.metric by more than min_delta (None: never stop early).",
    )
    min_delta: float = Field(
        0.0, ge=0, description="Least change of eval.metric that counts as an improvement."
    )
    keep_best: bool = Field(
        False,
        description="Save the policy with the best eval.metric so far to <output_dir>/best "
        "(save_pretrained, with best.json naming its step and value).",
    )


class RunConfig(Section):
    """Where the run writes, for how long, and how it logs."""

    output_dir: str = Field("runs/turnrl", description="Run directory.")
    max_steps: int = Field(100, ge=1, description="Training steps.")
    seed: int = Field(0, description="Seed for python, numpy and torch.")
    log_every: int = Field(1, ge=1, description="Console line every N steps.")
    progress: bool | None = Field(
        None, description="Live progress bar (None: when stderr is a terminal)."
    )
    plot: bool = Field(True, description="Draw metrics.png in the run directory at the end.")
    save_final: bool = Field(True, description="save_pretrained the policy at the end.")
    checkpoint_every: int = Field(
        0, ge=0, description="Write a resumable checkpoint every N steps and at the end (0: off)."
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="How many of the latest checkpoints to keep."
    )
    overwrite: bool = Field(
        False,
        description="Start afresh in an output_dir that holds a run, deleting its metrics, "
        "checkpoints and final model (off: such a directory is refused unless resuming).",
    )


class WandbConfig(Section):
    """Weights & Biases logging (off by default)."""

    enabled: bool = Field(False, description="Log to wandb.")
    project: str = Field("turnrl", description="wandb project.")
    name: str | None = Field(None, description="Run name.")
    tags: list[str] = Field(default_factory=list, description="Run tags.")
    mode: Literal["online", "offline", "disabled"] = Field("offline", description="wandb mode.")


class MismatchConfig(Section):
    """Rollout/trainer mismatch: measured, and corrected (turnrl.training.mismatch)."""

    correction: Literal["none", "tis", "mis"] = Field(
        "none",
        description="none: the PPO ratio's denominator is the engine's recorded log-probs "
        "(exact when the engine computes what the trainer does, as the fp32 HF engine does); "
        "tis: the trainer's own pre-update log-probs, and each policy-gradient term weighted "
        "by min(w, cap) with w = pi_trainer / pi_engine (truncated importance sampling); mis: "
        "the same with w kept inside [lower, cap] and 0 outside (masked importance sampling).",
    )
    level: Literal["token", "sequence"] = Field(
        "token",
        description="Importance weight per token, or one per trajectory (the product of its "
        "tokens' ratios over all its rows) given to each of its tokens.",
    )
    cap: float = Field(
        2.0, ge=1, description="tis: the largest weight; mis: the upper bound of the kept weights."
    )
    lower: float | None = Field(
        None, gt=0, description="mis: the lower bound of the kept weights (None: 1 / cap)."
    )
    measure: bool = Field(
        True,
        description="Log train/mismatch_kl and train/is_ratio_* when correction is none too, "
        "from the log-probs the update's first optimizer step computes before it moves the "
        "policy (no extra forward pass); a correction scores them before the update anyway. "
        "Needs turns with engine log-probs.",
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> MismatchConfig:
        if self.lower is not None and self.lower > self.cap:
            raise ValueError(
                f"lower={self.lower} exceeds cap={self.cap}: mis keeps weights in [lower, cap], "
                "so lower must be at most cap (leave it unset for 1 / cap)"
            )
        return self

    @property
    def lower_bound(self) -> float:
        """MIS's lower bound: ``lower``, or ``1 / cap`` when unset."""
        return self.lower if self.lower is not None else 1.0 / self.cap
