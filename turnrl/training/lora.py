"""LoRA through peft, and the reference model it gives for free.

With ``config.model.lora`` set, the Trainer wraps the policy with peft's
``get_peft_model`` (Hu et al. 2021, "LoRA", arXiv 2106.09685) so only the
adapters train. The frozen reference model for the KL term is then the same
network with its adapters switched off (:class:`AdapterDisabledReference`), as
TRL does: no second copy of the weights. Saving the policy stores the adapter;
:func:`merged_copy` gives a plain model with the adapters folded in for export.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from turnrl.training.config import LoraSettings


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:
        raise ImportError(
            "config.model.lora needs peft: pip install -e '.[lora]' (or pip install peft)"
        ) from e
    return peft


def is_peft_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft model (already has adapters)."""
    try:
        peft = _peft()
    except ImportError:
        return False
    return isinstance(model, peft.PeftModel)


def add_lora(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    """``model`` with LoRA adapters; only the adapters require gradients."""
    peft = _peft()
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    with _peft_wrapping():
        return peft.get_peft_model(model, config)


def load_adapter(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """``model`` with the saved LoRA adapter at ``path``, for inference (adapters frozen)."""
    with _peft_wrapping():
        return _peft().PeftModel.from_pretrained(model, str(path))


@contextlib.contextmanager
def _peft_wrapping() -> Iterator[None]:
    """Hide the deprecation warning peft's ``PeftModel.__init__`` triggers, and only it.

    peft (0.21 and earlier) reads ``model.is_gradient_checkpointing``, which
    transformers 5 deprecated for ``is_activation_checkpointing``: every wrap of a
    model printed a FutureWarning about code that is neither the user's nor
    turnrl's. The filter matches that one message inside this block only; any
    other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


class AdapterDisabledReference:
    """Calls the peft policy with its adapters disabled: the base model, no copy."""

    def __init__(self, policy: torch.nn.Module) -> None:
        self.policy = policy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.policy.disable_adapter():
            return self.policy(*args, **kwargs)


def merged_copy(policy: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapters merged in (the policy is unchanged)."""
    return copy.deepcopy(policy).merge_and_unload()
