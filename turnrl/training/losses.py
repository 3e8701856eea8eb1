"""Policy losses, KL estimators and the value loss: tensors in, ``(loss, stats)`` out.

- PPO-clip: Schulman et al., "Proximal Policy Optimization Algorithms" (2017),
  with separate lower and upper clip ranges (DAPO's clip-higher, Yu et al. 2025,
  arXiv 2503.14476).
- KL estimators: Schulman, "Approximating KL Divergence" (2020), with
  ``r = log ref - log pi`` on tokens sampled from pi: ``k1 = -r`` (unbiased,
  can be negative), ``k2 = r^2 / 2`` (biased, low variance), ``k3 = exp(r) - r - 1``
  (unbiased, non-negative; GRPO's choice, Shao et al. 2024, arXiv 2402.03300).
- Clipped value loss: the PPO2 baseline implementation's ``max`` of the
  unclipped and clipped squared errors, halved.

GVPO's loss, which is its own algorithm, lives in :mod:`turnrl.training.gvpo`.

Aggregation. Per-token losses become one number over a whole optimizer step:
the trainer passes the step's normalizer, so splitting a step into
micro-batches (gradient accumulation) does not change the gradient. A
"sequence" is a trajectory: one trained as several rows (step-wise samples)
counts once, and its per-trajectory mean is over all its rows' tokens, so
the micro-batches of the update keep a trajectory's rows together
(:func:`turnrl.training.update.micro_batches`).

- ``token_mean``: every sampled token weighs the same (DAPO). Long trajectories
  weigh more; in multi-turn tasks failed episodes are the long ones.
- ``seq_mean_token_mean``: the mean over each trajectory's tokens, then over
  trajectories (the GRPO paper's ``1/G sum_i 1/|o_i| sum_t``).
- ``seq_mean_token_sum``: the sum over each trajectory's tokens, mean over
  trajectories: a trajectory weighs in proportion to its length, but the scale
  does not depend on what else is in the batch.
- ``constant``: the sum over all tokens divided by ``trajectories x L`` for a
  fixed budget ``L`` (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783): no length
  normalization at all, so no length bias.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from turnrl.training.batch import TrajectoryIndex


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1. Shapes: x (N, T), mask (N, T)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimate of KL(pi || ref): ``log pi - log ref``. Shape (N, T)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k2 estimate of KL(pi || ref): ``(log pi - log ref)^2 / 2``. Shape (N, T)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref).

    Args:
        logprobs: Shape (N, T), log pi of the sampled tokens.
        ref_logprobs: Shape (N, T), log ref of the same tokens.

    Returns:
        Shape (N, T), >= 0.
    """
    log_ratio = ref_logprobs - logprobs  # (N, T)
    return torch.exp(log_ratio) - log_ratio - 1


class Aggregation(Protocol):
    """Per-token losses (N, T) -> one number, given the step's normalizer and rows' trajectories."""

    def __call__(
        self,
        per_token: torch.Tensor,
        mask: torch.Tensor,
        normalizer: int | float,
        trajectory_ids: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate loss (to be minimized).

    Args:
        logprobs: Shape (N, T), log pi_theta of the sampled tokens.
        old_logprobs: Shape (N, T), log-probs the tokens were sampled with.
        advantages: Shape (N, T).
        mask: Shape (N, T), 1 on sampled tokens.
        clip_eps_low: The ratio is clipped below at ``1 - clip_eps_low``.
        clip_eps_high: ... and above at ``1 + clip_eps_high``.

    Returns:
        ``(per_token_loss (N, T), stats)``; stats hold ``clip_frac`` and
        ``ratio_mean`` over masked tokens (detached).
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (N, T)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high)
    per_token = torch.maximum(pg_loss1, pg_loss2)  # (N, T)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((pg_loss2 > pg_loss1).float(), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return per_token * mask, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped value loss ``0.5 * max((v - R)^2, (v_clip - R)^2)``.

    Args:
        values: Shape (N, T), the value head's current predictions.
        old_values: Shape (N, T), its predictions when the batch was collected.
        returns: Shape (N, T), the targets (advantages + old values for GAE).
        mask: Shape (N, T).
        clip: ``v_clip = old + clamp(v - old, -clip, clip)``; None: no clipping.

    Returns:
        ``(per_token_loss (N, T), stats)`` with ``value_clip_frac``.
    """
    unclipped = (values - returns) ** 2
    if clip is None:
        per_token = 0.5 * unclipped
        clipped_more = torch.zeros_like(unclipped)
    else:
        clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped = (clipped_values - returns) ** 2
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        clipped_more = (clipped > unclipped).float()
    with torch.no_grad():
        stats = {"value_clip_frac": masked_mean(clipped_more, mask)}
    return per_token * mask, stats


def token_mean(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    normalizer: int | float,
    trajectory_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of masked per-token losses divided by the step's normalizer.

    ``token_mean``, ``seq_mean_token_sum`` and ``constant`` are this same sum;
    they differ only in the normalizer the trainer passes: the step's token
    count, its trajectory count, or trajectories x a fixed token budget. A sum
    over tokens does not depend on how they are split into rows, so
    ``trajectory_ids`` is not needed.

    Args:
        per_token: Shape (N, T).
        mask: Shape (N, T).
        normalizer: For the whole optimizer step (all micro-batches).
        trajectory_ids: Shape (N,); unused (see above).
    """
    return (per_token * mask).sum() / max(float(normalizer), 1.0)


def seq_mean_token_mean(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    num_sequences: int | float,
    trajectory_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over each trajectory's masked tokens, summed, divided by the step's trajectory count.

    Args:
        per_token: Shape (N, T).
        mask: Shape (N, T).
        num_sequences: Trajectories in the whole optimizer step (all micro-batches).
        trajectory_ids: Shape (N,), each row's trajectory, whose rows must all
            be here; None: one row per trajectory.
    """
    trajectories = TrajectoryIndex.of(trajectory_ids, len(mask))
    sums = trajectories.sum((per_token * mask).sum(-1))  # (M,)
    per_sequence = sums / trajectories.sum(mask.sum(-1)).clamp(min=1)  # (M,)
    return per_sequence.sum() / max(float(num_sequences), 1.0)


# The same computation as token_mean, under the names of the other normalizers.
seq_mean_token_sum = token_mean
constant_normalizer = token_mean


AGGREGATIONS: dict[str, Aggregation] = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum": seq_mean_token_sum,
    "constant": constant_normalizer,
}
"""How per-token losses become one number; each takes the step's normalizer."""
