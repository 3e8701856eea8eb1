"""One optimizer step on a RolloutBatch: micro-batches, AMP, clipping.

The batch is split into micro-batches of ``optim.micro_batch_size``
sequences; each runs forward and backward, and gradients accumulate into a
single optimizer step. Per-token losses are divided by the token count of the
whole step (not of the micro-batch), so the update does not depend on how the
batch is split. The reference model's forward runs under ``no_grad`` on the
same micro-batch.

Mixed precision: ``bf16`` runs the forward passes under bf16 autocast (CPU or
CUDA); ``fp16`` also scales the loss with a GradScaler and is CUDA-only.
A step whose gradient norm is not finite is skipped: gradients are dropped
and parameters and optimizer state stay as they were.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from turnrl.training.batch import RolloutBatch
from turnrl.training.config import TrainingConfig
from turnrl.training.logprobs import token_logprobs
from turnrl.training.losses import (
    KL_ESTIMATORS,
    masked_mean,
    ppo_clip_loss,
    seq_mean_token_mean,
    token_mean,
)


@dataclass
class Optimization:
    """The optimizer, its schedule and the loss scaler, made together."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


# How per-token losses become one number; each takes the step's normalizer.
AGGREGATIONS = {"token_mean": token_mean, "seq_mean_token_mean": seq_mean_token_mean}


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


def make_optimization(model: torch.nn.Module, config: TrainingConfig) -> Optimization:
    """AdamW over trainable parameters, linear warmup then cosine decay to ``min_lr_ratio``."""
    opt = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(
        params, lr=opt.lr, weight_decay=opt.weight_decay, betas=opt.adam_betas
    )
    schedule = warmup_cosine(opt.warmup_steps, config.run.max_steps, opt.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler("cuda", enabled=opt.precision == "fp16")
    return Optimization(optimizer, scheduler, scaler)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def policy_update(
    policy: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    optim: Optimization,
    config: TrainingConfig,
) -> dict[str, float]:
    """Accumulate gradients over micro-batches and take one optimizer step.

    Args:
        policy: The model being trained.
        ref_model: Frozen reference for the KL term (None when ``beta == 0``).
        batch: The step's trajectories.
        advantages: Shape (N, T).
        optim: Optimizer, schedule and scaler.
        config: The training configuration.

    Returns:
        Metrics of the step (``loss/*``, ``train/*``).
    """
    algo, opt = config.algorithm, config.optim
    device = next(policy.parameters()).device
    temperature = config.generation.temperature
    num_tokens = batch.num_tokens
    kl_fn = KL_ESTIMATORS[algo.kl_estimator]
    aggregate, normalizer = (
        AGGREGATIONS[algo.loss_aggregation],
        (num_tokens if algo.loss_aggregation == "token_mean" else len(batch)),
    )
    policy.train()
    sums = {"loss/policy": 0.0, "loss/kl": 0.0, "loss/total": 0.0, "train/clip_frac": 0.0}

    for start in range(0, len(batch), opt.micro_batch_size):
        rows = slice(start, start + opt.micro_batch_size)
        micro = batch.select(rows)
        micro_adv = advantages[rows, : micro.input_ids.shape[1]]  # (n, T')
        mask = micro.loss_mask
        with autocast(device, opt.precision):
            logprobs = token_logprobs(
                policy, micro.input_ids, micro.attention_mask, temperature=temperature
            )  # (n, T')
        old = micro.behavior_logprobs if batch.has_behavior_logprobs else logprobs.detach()
        per_token, stats = ppo_clip_loss(
            logprobs,
            old,
            micro_adv,
            mask,
            clip_eps_low=algo.clip_eps_low,
            clip_eps_high=algo.clip_eps_high,
        )
        policy_loss = aggregate(per_token, mask, normalizer)
        loss = policy_loss
        if ref_model is not None and algo.beta > 0:
            with torch.no_grad(), autocast(device, opt.precision):
                ref_logprobs = token_logprobs(
                    ref_model, micro.input_ids, micro.attention_mask, temperature=temperature
                )
            kl = kl_fn(logprobs, ref_logprobs)  # (n, T')
            kl_loss = aggregate(kl, mask, normalizer)
            loss = loss + algo.beta * kl_loss
            sums["loss/kl"] += kl_loss.item()
        optim.scaler.scale(loss).backward()
        share = mask.sum().item()
        # Each micro-batch loss is already divided by the whole step's normalizer.
        sums["loss/policy"] += policy_loss.item()
        sums["loss/total"] += loss.item()
        sums["train/clip_frac"] += stats["clip_frac"].item() * share / max(num_tokens, 1)

    optim.scaler.unscale_(optim.optimizer)
    params = [p for g in optim.optimizer.param_groups for p in g["params"]]
    max_norm = opt.max_grad_norm if opt.max_grad_norm is not None else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    skipped = not math.isfinite(grad_norm)
    if skipped:
        optim.optimizer.zero_grad(set_to_none=True)
        optim.scaler.update()
    else:
        optim.scaler.step(optim.optimizer)
        optim.scaler.update()
        optim.scheduler.step()
    optim.optimizer.zero_grad(set_to_none=True)

    return sums | {
        "train/grad_norm": grad_norm,
        "train/lr": optim.scheduler.get_last_lr()[0],
        "train/num_tokens": float(num_tokens),
        "train/num_sequences": float(len(batch)),
        "train/skipped_nonfinite": float(skipped),
        "train/advantage_abs_mean": masked_mean(advantages.abs(), batch.loss_mask).item(),
    }
