"""A micro-batch's loss: the algorithm's policy loss, the KL term, the entropy bonus, the critic's.

Every term is divided by the sizes of the whole optimizer step
(:class:`~turnrl.training.algorithms.StepSizes`: its token count, sequence
count, or token budget; see :mod:`turnrl.training.losses`), not of the
micro-batch, so the update does not depend on how the step is split. The policy
loss is the one the algorithm table pairs with the estimator
(:func:`~turnrl.training.algorithms.algorithm_for`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.profiler import record_function

from turnrl.training.algorithms import StepSizes, algorithm_for
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import AlgorithmConfig, TrainingConfig
from turnrl.training.logprobs import TokenForward, forward_tokens, unscored_prefix
from turnrl.training.losses import AGGREGATIONS, KL_ESTIMATORS, masked_mean, value_loss
from turnrl.training.optim import autocast
from turnrl.training.value import ValueModel, state_values


class Critic(NamedTuple):
    """The value model, and the module its forward passes go through (a DDP wrapper or itself)."""

    model: ValueModel
    forward: torch.nn.Module


def constant_tokens(config: TrainingConfig) -> int:
    """The per-trajectory token budget of ``loss_aggregation="constant"``."""
    if config.algorithm.constant_tokens is not None:
        return config.algorithm.constant_tokens
    return config.generation.max_new_tokens * (config.rollout.max_turns or 1)


def step_normalizer(tokens: float, sequences: float, config: TrainingConfig) -> float:
    """What the step's aggregated losses are divided by (``algorithm.loss_aggregation``).

    ``sequences`` counts trajectories: one trained as several rows counts once.
    """
    how = config.algorithm.loss_aggregation
    if how == "token_mean":
        return float(tokens)
    if how == "constant":
        return float(sequences * constant_tokens(config))
    return float(sequences)


def micro_batch_loss(
    policy: torch.nn.Module,
    critic: Critic | None,
    micro: RolloutBatch,
    step: StepSizes,
    config: TrainingConfig,
    on_logprobs: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's share of the step loss, and its share of the metrics.

    Args:
        policy: The module the policy's forward pass goes through.
        critic: The value model (GAE), or None.
        micro: Scored and estimated rows: whole trajectories (whole groups for
            a loss that compares them).
        step: The sizes of the optimizer step the micro-batch belongs to.
        config: The training configuration.
        on_logprobs: Called with the policy's log-probs of ``micro`` (n, T),
            detached (the update measures the mismatch with them).

    Returns:
        The loss to backpropagate, and metrics (``loss/*``, ``train/*``) to sum
        over the step's micro-batches.
    """
    algo = config.algorithm
    spec = algorithm_for(algo)
    mask = micro.loss_mask
    aggregate = AGGREGATIONS[algo.loss_aggregation]
    out = _policy_forward(policy, micro, config, hidden=critic is not None and critic.model.shared)
    share = mask.sum().item() / max(step.rank_tokens, 1)  # this micro-batch's share of the tokens
    if on_logprobs is not None:
        on_logprobs(out.logprobs.detach())
    loss, parts = spec.loss.compute(out.logprobs, micro, algo, step)
    parts["loss/policy"] = loss.item()
    if micro.ref_logprobs is not None:
        kl = KL_ESTIMATORS[algo.kl_estimator](out.logprobs, micro.ref_logprobs)  # (n, T)
        kl_loss = aggregate(kl, mask, step.normalizer, micro.trajectory_ids)
        parts["loss/kl"] = kl_loss.item()
        parts["train/kl"] = masked_mean(kl.detach(), mask).item() * share
        if spec.loss.adds_kl_term and algo.kl_penalty == "loss" and algo.beta > 0:
            loss = loss + algo.beta * kl_loss
    entropy_loss = aggregate(out.entropy, mask, step.normalizer, micro.trajectory_ids)
    parts["train/entropy"] = masked_mean(out.entropy.detach(), mask).item() * share
    if algo.entropy_coef > 0:
        loss = loss - algo.entropy_coef * entropy_loss
    if critic is not None:
        v_loss, clip_frac = _value_loss(critic, micro, out.hidden, config, step.normalizer)
        loss = loss + algo.value_coef * v_loss
        parts["loss/value"] = v_loss.item()
        parts["train/value_clip_frac"] = clip_frac * share
    parts["loss/total"] = loss.item()
    return loss, parts


def _policy_forward(
    policy: torch.nn.Module, micro: RolloutBatch, config: TrainingConfig, *, hidden: bool
) -> TokenForward:
    """The policy's log-probs and entropies of ``micro`` (and its hidden states if ``hidden``)."""
    algo, opt = config.algorithm, config.optim
    device = micro.input_ids.device
    with autocast(device, opt.precision), record_function("turnrl/policy_forward"):
        return forward_tokens(
            policy,
            micro.input_ids,
            micro.attention_mask,
            temperature=config.generation.temperature,
            entropy=True,
            entropy_grad=algo.entropy_coef > 0,
            hidden=hidden,
            shared_prefix=unscored_prefix(micro.loss_mask) if opt.share_prompt_forward else 0,
        )


def _value_loss(
    critic: Critic,
    micro: RolloutBatch,
    policy_hidden: torch.Tensor | None,
    config: TrainingConfig,
    normalizer: float,
) -> tuple[torch.Tensor, float]:
    """The clipped value loss of ``micro``, aggregated over the step, and its clip fraction."""
    assert micro.values is not None and micro.returns is not None
    algo: AlgorithmConfig = config.algorithm
    mask = micro.loss_mask
    with autocast(micro.input_ids.device, config.optim.precision):
        values = critic.forward(micro.input_ids, micro.attention_mask, policy_hidden)
    per_token, stats = value_loss(
        state_values(values.float()),
        state_values(micro.values),
        micro.returns,
        mask,
        clip=algo.value_clip,
    )
    loss = AGGREGATIONS[algo.loss_aggregation](per_token, mask, normalizer, micro.trajectory_ids)
    return loss, stats["value_clip_frac"].item()
