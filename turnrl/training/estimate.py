"""The estimate step: the KL penalty in the reward, the estimator, whitening, value targets.

Whether advantages are whitened by default is the algorithm's choice
(:data:`~turnrl.training.algorithms.ALGORITHMS`); ``algorithm.whiten_advantages``
overrides it. So is the value each token's advantage is measured from: the critic's
target is the advantage (before whitening) plus that value. With several processes, the
batch std of the rewards and the whitening moments are those of all ranks' batches
together.
"""

from __future__ import annotations

import dataclasses

import torch

from turnrl.training.advantages import AdvantageEstimator, whiten
from turnrl.training.algorithms import algorithm_for
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import AlgorithmConfig, TrainingConfig
from turnrl.training.distributed import DistributedContext, all_sum
from turnrl.training.losses import KL_ESTIMATORS
from turnrl.training.value import critic_stats


def estimate(
    batch: RolloutBatch,
    estimator: AdvantageEstimator,
    config: TrainingConfig,
    ctx: DistributedContext | None = None,
) -> tuple[RolloutBatch, dict[str, float]]:
    """Apply the KL reward penalty, run the estimator, whiten, set value targets.

    Returns:
        The batch with ``advantages`` (and ``returns`` when it has values),
        and metrics (``train/kl_penalty`` when the KL is in the reward; with a
        critic ``train/explained_variance``, ``train/value_mean`` and
        ``train/return_mean``, see :func:`~turnrl.training.value.critic_stats`).

    Raises:
        ValueError: The estimator returned advantages of the wrong shape.
    """
    algo = config.algorithm
    metrics: dict[str, float] = {}
    if algo.kl_penalty == "reward" and algo.beta > 0 and batch.ref_logprobs is not None:
        batch, metrics["train/kl_penalty"] = _kl_reward_penalty(batch, algo)
    ctx = ctx or DistributedContext()
    if ctx.enabled and algo.scale_rewards == "batch":
        batch = dataclasses.replace(batch, reward_std=_reward_std(batch, ctx))
    advantages = estimator(batch, batch.values)  # (N, T)
    if advantages.shape != batch.loss_mask.shape:
        raise ValueError(
            f"the estimator returned shape {tuple(advantages.shape)}, expected "
            f"{tuple(batch.loss_mask.shape)} (one advantage per token)"
        )
    advantages = advantages * batch.loss_mask
    spec = algorithm_for(algo)
    returns = None
    if batch.values is not None:
        baseline = spec.value_baseline(batch, batch.values)  # (N, T)
        returns = (advantages + baseline) * batch.loss_mask
        critic = critic_stats(baseline, returns, batch.loss_mask)
        metrics |= {f"train/{name}": value for name, value in critic.items()}
    whitening = algo.whiten_advantages
    if whitening is None:
        whitening = spec.whiten_advantages
    if whitening:
        advantages = _whiten(advantages, batch.loss_mask, ctx)
    return dataclasses.replace(batch, advantages=advantages, returns=returns), metrics


def _kl_reward_penalty(batch: RolloutBatch, algo: AlgorithmConfig) -> tuple[RolloutBatch, float]:
    """The batch with ``beta * KL`` taken from its rewards, and the mean penalty per trajectory."""
    assert batch.old_logprobs is not None and batch.ref_logprobs is not None
    kl = KL_ESTIMATORS[algo.kl_estimator](batch.old_logprobs, batch.ref_logprobs)
    kl = kl * batch.loss_mask  # (N, T)
    penalty = algo.beta * kl
    trajectories = batch.trajectories()
    per_trajectory = trajectories.sum(penalty.sum(-1))  # (M,) over all of a trajectory's rows
    batch = dataclasses.replace(
        batch,
        token_rewards=batch.token_rewards - penalty,
        rewards=batch.rewards - trajectories.rows(per_trajectory),
    )
    return batch, per_trajectory.mean().item()


def _reward_std(batch: RolloutBatch, ctx: DistributedContext) -> float:
    """The std of the trajectories' rewards of every rank's batch (Bessel-corrected)."""
    trajectories = batch.trajectories()
    rewards = trajectories.pick(batch.rewards)  # (M,)
    n, total, squares = all_sum(
        [trajectories.count, rewards.sum().item(), (rewards**2).sum().item()], ctx
    )
    variance = max(squares - total**2 / n, 0.0) / max(n - 1, 1)
    return variance**0.5


def _whiten(advantages: torch.Tensor, mask: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Whiten over the masked tokens of every rank's batch. Shapes (N, T) -> (N, T)."""
    moments = None
    if ctx.enabled:
        count, total, squares = all_sum(
            [
                mask.sum().item(),
                (advantages * mask).sum().item(),
                (advantages**2 * mask).sum().item(),
            ],
            ctx,
        )
        mean = total / max(count, 1.0)
        moments = (mean, max(squares / max(count, 1.0) - mean**2, 0.0))
    return whiten(advantages, mask, moments=moments)
