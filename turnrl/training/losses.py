"""Policy losses and KL estimators: pure functions, tensors in, ``(loss, stats)`` out.

- PPO-clip: Schulman et al., "Proximal Policy Optimization Algorithms" (2017),
  with separate lower and upper clip ranges (DAPO's clip-higher, Yu et al. 2025).
- KL estimators: Schulman, "Approximating KL Divergence" (2020); k3 is the
  unbiased, always non-negative ``exp(r) - r - 1`` with ``r = log ref - log pi``,
  as in GRPO (Shao et al. 2024, DeepSeekMath).

Per-token losses are aggregated over a whole optimizer step: the trainer
passes the step's total token (or sequence) count, so splitting a step into
micro-batches (gradient accumulation) does not change the gradient.

- ``token_mean``: every sampled token weighs the same (DAPO). Long trajectories
  weigh more; in multi-turn tasks failed episodes are the long ones.
- ``seq_mean_token_mean``: average over each trajectory's tokens, then over
  trajectories (the GRPO paper's 1/G sum_i 1/|o_i| sum_t): every trajectory
  weighs the same, whatever its length.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1. Shapes: x (N, T), mask (N, T)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


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


KL_ESTIMATORS = {"k3": kl_k3}


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


def token_mean(
    per_token: torch.Tensor, mask: torch.Tensor, num_tokens: int | float
) -> torch.Tensor:
    """Sum of masked per-token losses divided by the step's token count.

    Args:
        per_token: Shape (N, T).
        mask: Shape (N, T).
        num_tokens: Masked tokens in the whole optimizer step (all micro-batches).
    """
    return (per_token * mask).sum() / max(float(num_tokens), 1.0)


def seq_mean_token_mean(
    per_token: torch.Tensor, mask: torch.Tensor, num_sequences: int | float
) -> torch.Tensor:
    """Mean over each sequence's masked tokens, summed, divided by the step's sequence count.

    Args:
        per_token: Shape (N, T).
        mask: Shape (N, T).
        num_sequences: Sequences in the whole optimizer step (all micro-batches).
    """
    per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (N,)
    return per_sequence.sum() / max(float(num_sequences), 1.0)
