"""The models a run trains and consults: policy, frozen reference, critic, and their DDP wrappers.

:func:`build_models` makes them in the one order that works for every
combination: LoRA adapters first (the agent hands the wrapped model to its
engine), the policy onto the rank's device, the critic (which may share the
policy's trunk), the DDP wrappers (DDP broadcasts rank 0's weights when it
wraps), and only then the reference, so every rank copies the same weights.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from turnrl.agents.base import TrainableAgent
from turnrl.agents.tiny import cache_dir, tiny_model_path
from turnrl.agents.transformers import pin_adapter_base
from turnrl.training.auto_lr import resolve_lr
from turnrl.training.chat_template import resolve_template_kwargs
from turnrl.training.config import TrainingConfig
from turnrl.training.config_sections import ModelConfig
from turnrl.training.distributed import DistributedContext
from turnrl.training.generation import resolve_generation
from turnrl.training.lora import AdapterDisabledReference, add_lora, is_peft_model, merged_copy
from turnrl.training.value import ValueModel

_DTYPES = typing.get_args(ModelConfig.model_fields["dtype"].annotation)  # what model.dtype takes


@dataclass
class TrainingModels:
    """What the update runs forward passes through.

    Attributes:
        policy: The model being trained (the agent's, updated in place).
        reference: The frozen KL reference: a copy of the starting policy, the
            policy with its LoRA adapters disabled, or None when no loss term
            or estimator needs one.
        value_model: The critic, for estimators that need one.
        wrapped: ``(policy, value_model)`` as forward passes see them: the
            DDP wrappers under torchrun, else the modules themselves.
        device: Where the policy's parameters live.
    """

    policy: torch.nn.Module
    reference: Any
    value_model: ValueModel | None
    wrapped: tuple[torch.nn.Module, torch.nn.Module | None]
    device: torch.device


def build_models(
    agent: TrainableAgent,
    config: TrainingConfig,
    dist: DistributedContext,
    device: torch.device,
    *,
    critic: bool,
    reference: bool,
) -> TrainingModels:
    """Prepare ``agent.model`` for training and build the models around it.

    Args:
        agent: The policy's agent; with ``config.model.lora`` its model is
            replaced by the LoRA-wrapped one.
        config: ``model.lora`` and ``algorithm.critic`` are read.
        dist: The process group (DDP wrappers when enabled).
        device: This rank's device (the policy moves there under torchrun on CUDA).
        critic: Build a value model.
        reference: Build the frozen KL reference.
    """
    lora = config.model.lora
    if lora is not None and not is_peft_model(agent.model):
        agent.model = add_lora(agent.model, lora)  # the agent hands it to its engine
    policy = agent.model
    if dist.enabled and device.type == "cuda":
        policy.to(device)
    value_model = None
    if critic:
        value_model = ValueModel(policy, separate=config.algorithm.critic == "separate")
    wrapped = (policy, value_model)
    if dist.enabled:
        wrapped = (_ddp(policy, device), _ddp(value_model, device))
    ref_model: Any = None
    if reference and is_peft_model(policy):
        ref_model = AdapterDisabledReference(policy)  # no second copy
    elif reference:
        ref_model = copy.deepcopy(policy).eval().requires_grad_(False)
    return TrainingModels(policy, ref_model, value_model, wrapped, next(policy.parameters()).device)


def run_config(config: TrainingConfig, agent: TrainableAgent) -> TrainingConfig:
    """The settings a run of ``agent`` uses, which its ``config.json`` records.

    The sampling settings (config or agent: :func:`.generation.resolve_generation`),
    the model it trains (:func:`record_model`), its chat template arguments
    (:func:`.chat_template.resolve_template_kwargs`, which gives the config's to the
    agent) and ``optim.lr: auto`` resolved for the model's size (:func:`.auto_lr.resolve_lr`).
    """
    config = record_model(resolve_generation(config, agent), agent)
    config = resolve_template_kwargs(config, agent)
    return resolve_lr(config, agent.model)


def record_model(config: TrainingConfig, agent: TrainableAgent) -> TrainingConfig:
    """``config`` with ``model.path`` and ``model.dtype`` describing ``agent``'s model.

    The run directory's ``config.json`` is what ``turnrl eval`` and ``turnrl
    export`` rebuild a checkpoint's model from, so a script's agent must be
    named there as an experiment file names it: ``model.path`` left None is
    filled with the directory the model was loaded from (absolute), and stays
    None for the embedded tiny model; a relative ``model.path`` naming that
    directory is made absolute, so the run reloads from any working directory;
    any other ``model.path`` the config gives is kept. ``model.dtype`` is the
    policy's.

    Returns:
        ``config`` itself when it already says so, else an updated copy.
    """
    update: dict[str, Any] = {}
    source, given = _loaded_from(agent.model), config.model.path
    names_source = given is None or str(Path(given).expanduser().resolve()) == source
    if source is not None and source != given and names_source:
        update["path"] = source
    dtype = str(next(agent.model.parameters()).dtype).removeprefix("torch.")
    if dtype != config.model.dtype and dtype in _DTYPES:
        update["dtype"] = dtype
    if not update:
        return config
    return config.model_copy(update={"model": config.model.model_copy(update=update)})


def _loaded_from(model: torch.nn.Module) -> str | None:
    """Where ``model`` was loaded from: an absolute directory, a name, or None (the tiny model,
    or a model built in memory)."""
    name = getattr(model, "name_or_path", "") or ""
    if not name:
        return None
    path = Path(name).expanduser()
    if not path.is_dir():
        return name  # not a local directory (a hub name): recorded as the model gave it
    path = path.resolve()
    if path.parent == cache_dir().expanduser().resolve() and path == tiny_model_path().resolve():
        return None
    return str(path)


def save_pretrained(models: TrainingModels, tokenizer: Any, path: Path, *, merge: bool) -> None:
    """``save_pretrained`` the policy and tokenizer (and the value model) into ``path``.

    With LoRA this stores the adapter (load it with peft on top of the base
    model), or with ``merge=True`` a plain model with the adapters merged in,
    loadable with ``AutoModelForCausalLM.from_pretrained``.
    """
    policy = models.policy
    model = merged_copy(policy) if merge and is_peft_model(policy) else policy
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    pin_adapter_base(path)
    if models.value_model is not None:
        models.value_model.save(path)


def sync_weights(policy: torch.nn.Module, engine: Any, version: int) -> None:
    """Hand the updated policy to the inference engine as ``version``.

    Only trainable tensors are sent (LoRA: the adapters), lazily: an engine
    that shares the policy's parameters never reads them, so this costs nothing.
    """
    trainable = ((n, p.detach()) for n, p in policy.named_parameters() if p.requires_grad)
    engine.update_weights(trainable, version)


def _ddp(module: torch.nn.Module | None, device: torch.device) -> torch.nn.Module | None:
    """``module`` wrapped in DistributedDataParallel (None stays None)."""
    if module is None:
        return None
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
