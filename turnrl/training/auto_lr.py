"""``optim.lr: auto``: the learning rate from the model's size, the profile and LoRA.

The rule (docs/configuration.md, "The learning rate by model size")::

    lr = auto_lr_scale x (10 with LoRA, else 1) x base(n)

``n`` is the model's parameter count, LoRA adapters not counted (the base
model's size). ``base(n)`` is 2e-4 up to 5M parameters, 1e-6 from 500M on,
and in between on the straight line through those two points in log-log space
(``lr ~ n ** -1.15``). The result is rounded to 3 significant digits, so the
number a run records in its ``config.json`` is the one it used.

Where the numbers come from: 2e-4 is the lr the demo was tuned with (the
embedded 3.4M-parameter model, full fine-tune, ``balanced``); 1e-6 is the
``balanced`` lr common for RL on pretrained 0.5B-8B LLMs, which the profiles
used before ``auto``. Values between 5M and 500M parameters are interpolated,
not measured. The profiles' ``auto_lr_scale``: 0.5 for ``conservative``, 1 for
``balanced`` and ``aggressive`` (3 collapsed a warm-started policy on the
arithmetic task; benchmarks/RESULTS.md, "Profiles"). LoRA's factor 10 is the
usual rule of thumb for adapters against a full fine-tune of the same model.
"""

from __future__ import annotations

import math

import structlog
import torch

from turnrl.training.config import TrainingConfig
from turnrl.training.lora import is_peft_model

log = structlog.get_logger(__name__)

SMALL = (5e6, 2e-4)
"""(parameters, lr): at and below this size the base lr is constant."""
LARGE = (5e8, 1e-6)
"""(parameters, lr): at and above this size the base lr is constant."""
LORA_FACTOR = 10.0
"""LoRA adapters train with this many times the full fine-tune lr."""


def auto_lr(num_params: int, *, lora: bool = False, scale: float = 1.0) -> float:
    """The rule's learning rate for a model of ``num_params`` parameters.

    Args:
        num_params: The model's parameter count without LoRA adapters.
        lora: Whether LoRA adapters are trained (x10).
        scale: ``optim.auto_lr_scale`` (the profile's step size).

    Raises:
        ValueError: ``num_params`` < 1 or ``scale`` <= 0.

    >>> auto_lr(3_436_544), auto_lr(10**9), auto_lr(10**9, lora=True, scale=3.0)
    (0.0002, 1e-06, 3e-05)
    """
    if num_params < 1 or not scale > 0:
        raise ValueError(f"auto_lr needs num_params >= 1 and scale > 0, got {num_params}, {scale}")
    (n0, lr0), (n1, lr1) = SMALL, LARGE
    # Where n lies between the anchors, 0 to 1 on a log scale (clamped at both ends).
    t = min(1.0, max(0.0, math.log(num_params / n0) / math.log(n1 / n0)))
    base = math.exp(math.log(lr0) + t * math.log(lr1 / lr0))
    lr = base * scale * (LORA_FACTOR if lora else 1.0)
    return float(f"{lr:.3g}")


def model_size(model: torch.nn.Module) -> int:
    """The parameters of ``model``, LoRA adapters not counted (a tied weight counts once)."""
    # peft names every adapter tensor lora_* (lora_A, lora_B, lora_embedding_*, lora_magnitude_*).
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)


def resolve_lr(config: TrainingConfig, model: torch.nn.Module) -> TrainingConfig:
    """``config`` with ``optim.lr: auto`` replaced by the rule's value for ``model``.

    LoRA is on when ``config.model.lora`` is set or ``model`` already has
    adapters. Logs ``lr_resolved`` with the size and the value. An explicit
    ``optim.lr`` is kept: ``config`` itself is returned.
    """
    if config.optim.lr != "auto":
        return config
    lora = config.model.lora is not None or is_peft_model(model)
    size = model_size(model)
    lr = auto_lr(size, lora=lora, scale=config.optim.auto_lr_scale)
    log.info("lr_resolved", lr=lr, parameters=size, lora=lora, scale=config.optim.auto_lr_scale)
    return config.model_copy(update={"optim": config.optim.model_copy(update={"lr": lr})})
