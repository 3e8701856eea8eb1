"""The sections of a TrainingConfig: one pydantic model per component.

Every field is described, choices are ``Literal``, unknown keys are rejected
(``extra="forbid"``), numbers must be finite and a boolean is not a number
(:class:`Section`). :mod:`turnrl.training.config` assembles them into
:class:`~turnrl.training.config.TrainingConfig` with profiles and file loading.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from turnrl.training.algorithms import ALGORITHMS, LOSSES, algorithm_for


class Section(BaseModel):
    """A config section: unknown keys, non-finite numbers and booleans-as-numbers refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads True as 1 for an int or float field; a boolean there is a mistake.
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _bool_as_number(field.annotation, value):
            raise ValueError("a boolean is not a number here; write the number itself")
        return value


class LoraSettings(Section):
    """LoRA adapters (peft) instead of full fine-tuning."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator (the scale is alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Which linear layers get adapters (peft's target_modules)."
    )


class ModelConfig(Section):
    """Which model to load (used by the CLI; scripts may pass an agent instead)."""

    path: str | None = Field(
        None, description="Local directory of a Hugging Face causal LM; None = embedded tiny model."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Parameter dtype of the policy and reference model."
    )
    lora: LoraSettings | None = Field(
        None,
        description="Train LoRA adapters (needs peft); the reference model is then the same "
        "model with the adapters disabled, not a second copy.",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None,
        description="Arguments of the chat template on every rendering, e.g. "
        "{enable_thinking: false} for Qwen3-style templates; None keeps the agent's own.",
    )


class GenerationSettings(Section):
    """How turns are sampled during training rollouts."""

    max_new_tokens: int = Field(64, ge=1, description="Most tokens per assistant turn.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (must be > 0 in RL).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_batch_size: int = Field(256, ge=1, description="Most requests in one generate call.")
    reuse_kv_cache: bool | None = Field(
        None,
        description="Reuse each episode's KV cache across turns and prefill a group's shared "
        "prompt once; None keeps the agent's own setting (on by default).",
    )
    weights: Literal["shared", "copy"] | None = Field(
        None,
        description="Where generation reads the policy weights: 'shared' samples from the "
        "parameters the optimizer updates (no copy), 'copy' from the engine's own copy, synced "
        "after each update (one more copy of the weights in memory); None keeps the agent's "
        "own setting ('shared' by default).",
    )


class RolloutConfig(Section):
    """How many episodes one step collects, and how."""

    scenarios_per_step: int = Field(8, ge=1, description="B: scenarios sampled per step.")
    num_generations: int = Field(
        8, ge=1, description="G: episodes per scenario (the group size of GRPO)."
    )
    max_concurrency: int = Field(256, ge=1, description="Most episodes running at once.")
    max_turns: int | None = Field(
        None, ge=1, description="Assistant turns per episode before truncation (None: env decides)."
    )
    min_group_size: int = Field(
        2, ge=1, description="Groups with fewer surviving episodes are dropped."
    )
    env_timeout_s: float | None = Field(
        300.0,
        gt=0,
        description="Fail an episode whose reset or step takes longer, in seconds (None: no "
        "limit, so a hanging environment hangs the run).",
    )
    reward_timeout_s: float | None = Field(
        600.0,
        gt=0,
        description="Fail a group whose reward function takes longer, in seconds, in training "
        "and evaluation (None: no limit, so a hanging reward hangs the run).",
    )
    max_failed_frac: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Stop the run when more than this fraction of a step's episodes failed.",
    )


class AlgorithmConfig(Section):
    """The advantage estimator and the policy loss."""

    estimator: str = Field(
        "grpo",
        description=f"The algorithm: {' | '.join(ALGORITHMS)} (turnrl.training.algorithms), "
        "or 'package.module:factory' for your own advantage estimator (a factory taking this "
        "AlgorithmConfig and returning an estimator) feeding the PPO-clip loss.",
    )
    loss: str | None = Field(
        None,
        description=f"The policy loss: {' | '.join(LOSSES)}. None: the estimator's own "
        "(gvpo for gvpo, ppo_clip for the others); only a loss that takes advantages may "
        "replace another such.",
    )
    scale_rewards: Literal["group", "batch", "none"] | None = Field(
        None,
        description="grpo/rloo/turn_grpo: divide centered rewards (returns for turn_grpo) by "
        "the group's (turn_grpo: the comparison set's) std, the batch std, or nothing (Dr. "
        "GRPO). None: group for grpo and turn_grpo, none for rloo.",
    )
    whiten_advantages: bool | None = Field(
        None,
        description="Shift and scale advantages to mean 0, std 1 over the batch's tokens. "
        "None: the algorithm's default (on for gae, off otherwise).",
    )
    clip_eps_low: float = Field(0.2, ge=0, description="PPO ratio clip below: 1 - clip_eps_low.")
    clip_eps_high: float = Field(0.2, ge=0, description="PPO ratio clip above: 1 + clip_eps_high.")
    beta: float = Field(
        0.04,
        ge=0,
        description="KL coefficient to the reference model (0 loads no reference); for gvpo, "
        "GVPO's beta.",
    )
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3", description="KL estimator (Schulman 2020): k1, k2 or k3."
    )
    kl_penalty: Literal["loss", "reward"] = Field(
        "loss",
        description="Add beta * KL to the loss, or subtract it from the reward (per token for "
        "gae, summed per trajectory for grpo/rloo).",
    )
    loss_aggregation: Literal[
        "token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant"
    ] = Field(
        "token_mean",
        description="How per-token losses become one number: mean over all tokens of a step, "
        "mean per trajectory then over trajectories (GRPO paper), sum per trajectory then mean, "
        "or sum over a fixed token budget (constant, Dr. GRPO).",
    )
    constant_tokens: int | None = Field(
        None,
        ge=1,
        description="Token budget per trajectory for loss_aggregation=constant (None: "
        "generation.max_new_tokens x rollout.max_turns, or max_new_tokens without a turn limit).",
    )
    entropy_coef: float = Field(
        0.0, ge=0, description="Entropy bonus: subtract entropy_coef x mean token entropy."
    )
    num_iterations: int = Field(
        1,
        ge=1,
        description="Passes over each rollout batch (PPO epochs; ratios use the "
        "behavior log-probs).",
    )
    num_minibatches: int = Field(
        1, ge=1, description="Optimizer steps per pass, each on a share of the groups."
    )
    skip_tied_groups: bool = Field(
        False,
        description="Drop groups whose rewards all tie (no signal for group estimators) before "
        "the update; they are counted in rollout/frac_zero_std either way.",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="gae: discount per sampled token.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="gae, turn_gae: GAE's lambda.")
    turn_gamma: float = Field(
        1.0,
        ge=0,
        le=1,
        description="turn_gae, turn_grpo: discount per turn (a turn's return is "
        "sum_j turn_gamma^(j-k) r_j over its own and later turns).",
    )
    turn_groups: Literal["index", "observation"] = Field(
        "index",
        description="turn_grpo: which turns a turn is compared with - turn k of every episode "
        "of its group (index), or its group's turns whose observation, the tokens since the "
        "agent's last reply, is identical (observation, GiGPO's anchor states).",
    )
    value_coef: float = Field(0.1, ge=0, description="gae, turn_gae: weight of the value loss.")
    value_clip: float | None = Field(
        0.2,
        gt=0,
        description="gae, turn_gae: clip value updates to +-value_clip (None: no clipping).",
    )
    critic: Literal["shared", "separate"] = Field(
        "shared",
        description="gae, turn_gae: value head on the policy's last hidden state (shared "
        "trunk), or on its own copy of the policy's trunk (separate).",
    )
    value_lr: float | None = Field(
        None,
        gt=0,
        description="gae, turn_gae: learning rate of the value parameters (None: optim.lr).",
    )
    gvpo_reference: Literal["behavior", "reference"] = Field(
        "behavior",
        description="gvpo: which policy plays pi_theta' - the policy that sampled the batch "
        "(the authors' choice) or the frozen reference model.",
    )
    gvpo_group_reduction: Literal["mean", "sum"] = Field(
        "mean",
        description="gvpo: average the per-group losses over the step's groups (the scale does "
        "not depend on batch or micro-batch size), or sum them over each micro-batch's groups "
        "and average over micro-batches, as the authors' verl recipe does (its loss is "
        "micro_batch_size / num_generations times larger; beta means the same in both).",
    )

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, value: str) -> str:
        if value not in ALGORITHMS and ":" not in value:
            raise ValueError(
                f"unknown estimator {value!r}; choose one of "
                f"{', '.join(ALGORITHMS)} or give 'package.module:factory'"
            )
        return value

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str | None) -> str | None:
        if value is not None and value not in LOSSES:
            raise ValueError(f"unknown loss {value!r}; choose one of {', '.join(LOSSES)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> AlgorithmConfig:
        algorithm_for(self).check(self)
        return self

    @property
    def uses_reference(self) -> bool:
        """Whether a frozen reference model is needed."""
        return algorithm_for(self).loss.uses_reference(self)


class OptimConfig(Section):
    """AdamW, schedule, clipping, accumulation, precision."""

    lr: float | Literal["auto"] = Field(
        "auto",
        description="Peak learning rate, or 'auto': chosen from the model's size when the "
        "Trainer is built, times auto_lr_scale, x10 with LoRA (turnrl.training.auto_lr); the "
        "run's config.json records the number used.",
    )
    auto_lr_scale: float = Field(
        1.0,
        gt=0,
        description="With lr: auto, multiply the size rule's lr by this (the profiles: "
        "conservative 0.5, balanced and aggressive 1); unused when lr is a number.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field(
        (0.9, 0.999), description="AdamW betas, each in [0, 1)."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Cosine decay floor as a fraction of lr."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; None disables.")
    micro_batch_size: int = Field(
        16, ge=1, description="Sequences per forward/backward; a step accumulates over all."
    )
    max_nonfinite_steps: int = Field(
        3, ge=1, description="Stop after this many consecutive steps with a non-finite gradient."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16 autocast, or fp16 autocast with GradScaler (CUDA only)."
    )
    share_prompt_forward: bool = Field(
        True,
        description="Run a prompt that several sequences of a micro-batch start with once in "
        "the log-prob forwards (a group's G copies), the rest over its KV cache.",
    )

    @field_validator("lr", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        # Checked here in full, so that a bad value gets one message, not one per union member.
        if value == "auto":
            return value
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number here; write the number itself")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError("expected a positive number or 'auto'") from None
        if not math.isfinite(number):
            raise ValueError("Input should be a finite number (or 'auto')")
        if number <= 0:
            raise ValueError("Input should be greater than 0 (or 'auto')")
        return number

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError(f"each AdamW beta must be in [0, 1), got {value}")
        return value


def _bool_as_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` holds a boolean where ``annotation`` wants a number."""
    if isinstance(value, list | tuple):
        return any(_bool_as_number(annotation, item) for item in value)
    if not isinstance(value, bool):
        return False
    kinds = _leaf_types(annotation)
    return bool(kinds & {int, float}) and not kinds & {bool, Any}


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types an annotation is made of (``tuple[float, float] | None`` -> float, None)."""
    if annotation is Any or (isinstance(annotation, type) and not typing.get_args(annotation)):
        return {annotation}
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {type(choice) for choice in typing.get_args(annotation)}
    if origin is dict:
        return {dict}
    out: set[Any] = set()
    for arg in typing.get_args(annotation):
        if arg is not Ellipsis:
            out |= _leaf_types(arg)
    return out
