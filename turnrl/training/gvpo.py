"""GVPO: its weights, its loss, its estimator, its micro-batch term and its settings.

Zhang et al. 2025, "GVPO: Group Variance Policy Optimization for Large Language
Model Post-Training", arXiv 2504.19599. For each group of ``k`` responses
``y_i`` to one prompt, with ``Delta_i = sum_t (log pi_theta - log pi_theta')(y_i)``
over the response's tokens and the implicit reward ``R_theta_i = beta * Delta_i``::

    loss_group = 1/(k-1) * sum_i 0.5 * ((R_theta_i - mean R_theta) - (R_i - mean R))^2

whose gradient is ``-beta/(k-1) * sum_i w_i grad log pi_theta(y_i)`` with the
weights ``w_i = (R_i - mean R) - beta * (Delta_i - mean Delta)`` (:func:`gvpo_weights`),
which sum to zero over a group. The loss is its own: the table entry
(:data:`turnrl.training.algorithms.ALGORITHMS` ``["gvpo"]``) pairs it with
:func:`make_gvpo`, whose "advantages" (the weights on the first update from the
sampler, ``R_i - mean R``) are only logged. Settings: ``algorithm.beta`` (the
paper's beta, > 0), ``gvpo_reference``, ``gvpo_group_reduction``.

Where this departs from the paper:

- ``pi_theta'`` is the policy that sampled the batch by default
  (``gvpo_reference="behavior"``, the authors' implementation), or the frozen
  reference model (``"reference"``). It needs no behavior log-probs: groups
  without them (replayed or demonstration data) are scored under the current
  policy before the update.
- The loss is the mean over a step's groups (``gvpo_group_reduction="mean"``):
  its scale does not depend on the batch or micro-batch size. The authors' verl
  recipe sums over the groups of a micro-batch and averages over micro-batches
  (``"sum"`` reproduces it). A constant factor leaves the minimizer alone; with
  Adam it mostly cancels; with SGD, or against ``max_grad_norm``, it is a step size.
- A multi-turn trajectory is one response: ``Delta_i`` sums over every sampled
  token of every turn, over all its rows when it trains as several (step-wise
  samples), and ``R_i`` is the trajectory's total reward; ``k`` counts
  trajectories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from turnrl.training.advantages import AdvantageEstimator, group_mean, group_size, per_token
from turnrl.training.batch import RolloutBatch, TrajectoryIndex

if TYPE_CHECKING:
    from turnrl.training.algorithms import StepSizes
    from turnrl.training.config import AlgorithmConfig


def log_ratio_sums(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``Delta_i``: each response's summed ``log pi_theta - log pi_theta'``.

    Args:
        logprobs: Shape (B, T); gradients flow through it.
        ref_logprobs: Shape (B, T), under ``pi_theta'`` (detached).
        mask: Shape (B, T), 1 on the response tokens.

    Returns:
        Shape (B,).
    """
    return ((logprobs - ref_logprobs.detach()) * mask).sum(-1)


def weights_from(
    delta: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor, beta: float
) -> torch.Tensor:
    """``w_i = (R_i - mean R) - beta * (Delta_i - mean Delta)``, means over each group.

    Shapes: delta (B,), rewards (B,), group_ids (B,) -> (B,).
    """
    rewards = rewards.to(delta.dtype)
    return (rewards - group_mean(rewards, group_ids)) - beta * (
        delta - group_mean(delta, group_ids)
    )


def gvpo_weights(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """GVPO's per-response weights ``w_i`` (see the module docstring).

    Args:
        logprobs: Shape (B, T).
        ref_logprobs: Shape (B, T), under ``pi_theta'`` (detached).
        mask: Shape (B, T).
        rewards: Shape (B,).
        group_ids: Shape (B,).
        beta: GVPO's beta.

    Returns:
        Shape (B,); the weights of a group sum to zero.
    """
    return weights_from(log_ratio_sums(logprobs, ref_logprobs, mask), rewards, group_ids, beta)


def gvpo_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    *,
    normalizer: float | None = None,
    trajectory_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GVPO's loss: ``sum_groups loss_group / normalizer`` (see the module docstring).

    The residual of each response is ``-w_i`` (:func:`weights_from`), so
    ``loss_group = 1/(k-1) * sum_i 0.5 * w_i^2``.

    Args:
        logprobs: Shape (B, T), per-token log-probs under the current policy.
        ref_logprobs: Shape (B, T), per-token log-probs under ``pi_theta'``.
        mask: Shape (B, T), 1 on the response tokens.
        rewards: Shape (B,), each response's reward.
        group_ids: Shape (B,), which group (prompt) each response belongs to.
        beta: GVPO's beta.
        normalizer: What the sum over groups is divided by: the number of
            groups in the whole optimizer step when this call sees only some of
            them (gradient accumulation), or the step's number of micro-batches
            for the recipe's sum over the groups of a micro-batch; default: the
            number of groups present (their mean).

    Returns:
        ``(loss, stats)``; stats (detached): ``gvpo/implicit_reward_mean``
        (``R_theta`` averaged over responses) and ``gvpo/weight_abs_mean``
        (mean ``|w_i|``).

    Raises:
        ValueError: A group has fewer than two responses.
    """
    responses = TrajectoryIndex.of(trajectory_ids, len(group_ids))
    rewards, group_ids = responses.pick(rewards), responses.pick(group_ids)  # (M,)
    num_groups = _check_pairs(group_ids)
    delta = responses.sum(log_ratio_sums(logprobs, ref_logprobs, mask))  # (M,)
    residual = -weights_from(delta, rewards, group_ids, beta)  # (M,)
    counts = group_size(group_ids).to(residual.dtype)  # (M,) k of each response's group
    per_response = 0.5 * residual**2 / (counts - 1)  # (M,)
    loss = per_response.sum() / float(normalizer if normalizer is not None else num_groups)
    with torch.no_grad():
        stats = {
            "gvpo/implicit_reward_mean": (beta * delta).mean(),
            "gvpo/weight_abs_mean": residual.abs().mean(),
        }
    return loss, stats


def _check_pairs(group_ids: torch.Tensor) -> int:
    """The number of groups; raises ValueError if one has fewer than two responses."""
    _, counts = torch.unique(group_ids, return_counts=True)
    if bool((counts < 2).any()):
        raise ValueError("gvpo_loss needs at least two responses in every group")
    return len(counts)


def make_gvpo(config: AlgorithmConfig) -> AdvantageEstimator:
    """GVPO's weights on the first update from the sampler: centered rewards (for logging).

    Credit: every turn of a trajectory gets the trajectory's weight, in the loss too.
    """

    def gvpo(batch: RolloutBatch, values: torch.Tensor | None = None) -> torch.Tensor:
        trajectories = batch.trajectories()
        rewards = trajectories.pick(batch.rewards)  # (M,)
        centered = rewards - group_mean(rewards, trajectories.pick(batch.group_ids))
        return per_token(trajectories.rows(centered), batch.loss_mask)

    return gvpo


def gvpo_policy_loss(
    logprobs: torch.Tensor, micro: RolloutBatch, config: AlgorithmConfig, step: StepSizes
) -> tuple[torch.Tensor, dict[str, float]]:
    """A micro-batch's share of the step's GVPO loss, and its share of the GVPO metrics.

    Args:
        logprobs: Shape (n, T), the current policy's log-probs of ``micro``.
        micro: Whole groups (so whole trajectories), with ``old_logprobs``
            (and ``ref_logprobs`` for ``gvpo_reference="reference"``).
        config: ``beta``, ``gvpo_reference``, ``gvpo_group_reduction``.
        step: The optimizer step's sizes.

    Raises:
        ValueError: ``gvpo_reference="reference"`` without reference log-probs.
    """
    assert micro.old_logprobs is not None
    anchor = micro.ref_logprobs if config.gvpo_reference == "reference" else micro.old_logprobs
    if anchor is None:
        raise ValueError("gvpo_reference='reference' needs the reference model's log-probs")
    # The sum over groups: divided by the step's groups (their mean), or by its
    # micro-batches on all ranks (the recipe's sum per micro-batch, averaged).
    normalizer = step.micro_batches if config.gvpo_group_reduction == "sum" else step.groups
    loss, stats = gvpo_loss(
        logprobs,
        anchor,
        micro.loss_mask,
        micro.rewards,
        micro.group_ids,
        config.beta,
        normalizer=normalizer,
        trajectory_ids=micro.trajectory_ids,
    )
    share = micro.trajectories().count / step.rank_sequences  # of the step's trajectories
    return loss, {k: v.item() * share for k, v in stats.items()}


def uses_reference(config: AlgorithmConfig) -> bool:
    """Whether ``pi_theta'`` is the frozen reference model (else the behavior policy)."""
    return config.gvpo_reference == "reference"


def check_config(config: AlgorithmConfig) -> None:
    """Refuse settings GVPO cannot honour.

    Raises:
        ValueError: ``kl_penalty="reward"`` (GVPO regularizes through its own
            beta), or ``beta <= 0``.
    """
    if config.kl_penalty == "reward":
        raise ValueError(
            f"estimator={config.estimator!r} regularizes through its own beta; "
            "kl_penalty='reward' does not apply (leave it at 'loss')"
        )
    if config.beta <= 0:
        raise ValueError(
            f"estimator={config.estimator!r} needs beta > 0 (GVPO's loss scales with beta)"
        )
