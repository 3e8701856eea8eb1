"""Advantage estimators: pure functions of a RolloutBatch, one dict of kinds.

GRPO (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300), outcome
supervision: each trajectory's reward minus its group's mean, optionally
divided by a standard deviation, given to every sampled token of the
trajectory. Where this departs from the paper:

- Normalization is a separate, named step (``scale_rewards``): ``group``
  divides by the group's std as in the paper, ``batch`` by the whole batch's
  std, ``none`` does not divide (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783,
  who show the group std biases updates toward easy and hard prompts).
- The std is Bessel-corrected and ``eps = 1e-4`` is added, as TRL does.
- A multi-turn trajectory is one sample: its total reward (environment
  rewards of every turn plus reward functions) is the outcome, and every
  assistant token of every turn gets the same advantage.

An estimator is any callable ``(batch, values=None) -> advantages (N, T)``;
``ESTIMATORS`` maps a config ``kind`` to a factory taking the
``AlgorithmConfig``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from turnrl.training.batch import RolloutBatch
from turnrl.training.config import AlgorithmConfig


class AdvantageEstimator(Protocol):
    """Per-token advantages for a batch. Returns shape (N, T), 0 off the loss mask."""

    def __call__(self, batch: RolloutBatch, values: torch.Tensor | None = None) -> torch.Tensor: ...


def _group_sum(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over each group. Shapes: (N,), (N,) -> (num_groups,)."""
    num_groups = int(group_ids.max()) + 1
    return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, group_ids, x)


def group_mean(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Each element's group mean. Shapes: x (N,), group_ids (N,) -> (N,)."""
    counts = _group_sum(torch.ones_like(x), group_ids)
    return (_group_sum(x, group_ids) / counts)[group_ids]


def group_std(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Each element's group std (Bessel-corrected; 0 for a group of one). Shape (N,)."""
    counts = _group_sum(torch.ones_like(x), group_ids)
    squares = _group_sum((x - group_mean(x, group_ids)) ** 2, group_ids)
    return (squares / (counts - 1).clamp(min=1)).sqrt()[group_ids]


def grpo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantage per trajectory.

    Args:
        rewards: Shape (N,).
        group_ids: Shape (N,).
        scale: ``group`` | ``batch`` | ``none`` (see the module docstring).
        eps: Added to the std before dividing.

    Returns:
        Shape (N,).
    """
    centered = rewards - group_mean(rewards, group_ids)
    if scale == "group":
        return centered / (group_std(rewards, group_ids) + eps)
    if scale == "batch":
        return centered / (rewards.std() + eps)
    if scale == "none":
        return centered
    raise ValueError(f"unknown scale_rewards {scale!r}; choose group, batch or none")


def per_token(sequence_advantages: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast (N,) advantages over the sampled tokens: (N,) x (N, T) -> (N, T)."""
    return sequence_advantages[:, None] * loss_mask


def make_grpo(config: AlgorithmConfig) -> AdvantageEstimator:
    """The GRPO estimator configured by ``config.scale_rewards``."""

    def grpo(batch: RolloutBatch, values: torch.Tensor | None = None) -> torch.Tensor:
        advantages = grpo_advantages(batch.rewards, batch.group_ids, scale=config.scale_rewards)
        return per_token(advantages, batch.loss_mask)

    return grpo


ESTIMATORS: dict[str, Callable[[AlgorithmConfig], AdvantageEstimator]] = {
    "grpo": make_grpo,
}
