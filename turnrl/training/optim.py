"""The optimizer, its learning-rate schedule, mixed precision, and one optimizer step.

Mixed precision: ``bf16`` runs the forward passes under bf16 autocast (CPU or
CUDA); ``fp16`` also scales the loss with a GradScaler and is CUDA-only.
An optimizer step whose gradient norm is not finite is skipped: gradients are
dropped and parameters and optimizer state stay as they were.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from turnrl.training.config import TrainingConfig
from turnrl.training.value import ValueModel


@dataclass
class Optimization:
    """The optimizer, its schedule and the loss scaler, made together."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


def make_optimization(
    model: torch.nn.Module, config: TrainingConfig, value_model: ValueModel | None = None
) -> Optimization:
    """AdamW over trainable parameters, linear warmup then cosine decay to ``min_lr_ratio``.

    The schedule counts optimizer steps: ``max_steps x num_iterations x
    num_minibatches`` in a run (warmup is counted in training steps and
    scaled the same way). The value model's parameters, if any, are a second
    parameter group with ``algorithm.value_lr``.
    """
    opt, algo = config.optim, config.algorithm
    if opt.lr == "auto":
        raise ValueError(
            "optim.lr is 'auto': resolve it for the model first with "
            "turnrl.training.auto_lr.resolve_lr(config, model) (the Trainer does)"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": params}]
    if value_model is not None:
        own = [p for n, p in value_model.named_parameters() if p.requires_grad]
        groups.append({"params": own, "lr": algo.value_lr or opt.lr})
    optimizer = torch.optim.AdamW(
        groups,
        lr=opt.lr,
        weight_decay=opt.weight_decay,
        betas=opt.adam_betas,
        fused=_can_fuse([p for g in groups for p in g["params"]]),
    )
    per_step = algo.num_iterations * algo.num_minibatches
    schedule = warmup_cosine(
        opt.warmup_steps * per_step, config.run.max_steps * per_step, opt.min_lr_ratio
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler("cuda", enabled=opt.precision == "fp16")
    return Optimization(optimizer, scheduler, scaler)


def _can_fuse(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW (one kernel for all parameters) takes ``params``.

    It does for floating-point tensors all on the CPU or all on one CUDA device
    type; PyTorch's default on the CPU is a loop over the tensors.
    """
    devices = {p.device.type for p in params}
    return (
        len(devices) == 1
        and devices <= {"cpu", "cuda"}
        and all(p.is_floating_point() for p in params)
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def optimizer_step(optim: Optimization, max_grad_norm: float | None) -> tuple[float, bool]:
    """Unscale, clip, step (unless the norm is not finite), advance the schedule."""
    optim.scaler.unscale_(optim.optimizer)
    params = [p for g in optim.optimizer.param_groups for p in g["params"]]
    max_norm = max_grad_norm if max_grad_norm is not None else float("inf")
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
    return grad_norm, skipped
