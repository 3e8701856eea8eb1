"""Load a trained policy from wherever a run left it, and export it in HF format.

A run leaves its policy in three forms, and :func:`load_policy` takes any of
them (or the run directory, preferring ``final/`` over the newest checkpoint):

- ``<run>/final``: written by ``save_pretrained`` — a full model, or with LoRA
  the adapter alone (``adapter_config.json`` naming the local base model);
- ``<run>/checkpoints/step-N``: ``model.safetensors`` with every weight (base
  and adapters) plus the training ``config.json`` that names the base model.

:func:`export_policy` writes a plain Hugging Face directory (LoRA merged in),
loadable with ``AutoModelForCausalLM.from_pretrained`` without turnrl or peft.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from turnrl.agents.tiny import tiny_model_path
from turnrl.agents.transformers import TransformersAgent
from turnrl.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    read_checkpoint_config,
    read_trainer_state,
)
from turnrl.training.lora import add_lora, is_peft_model, load_adapter, merged_copy


def resolve_policy_dir(path: str | Path) -> Path:
    """The directory holding the policy: ``path`` itself, ``path/final`` or its newest checkpoint.

    Raises:
        FileNotFoundError: Nothing loadable at ``path``.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory (give a run directory or checkpoint)")
    if _is_hf_dir(path) or (path / "trainer.json").is_file():
        return path
    if (path / "final").is_dir():
        return path / "final"
    checkpoint = latest_checkpoint(path)
    if checkpoint is not None:
        return checkpoint
    raise FileNotFoundError(
        f"{path}: not a model, a checkpoint or a run directory with final/ or checkpoints/"
    )


def load_policy(path: str | Path, **agent_kwargs: Any) -> TransformersAgent:
    """A :class:`TransformersAgent` with the policy stored at ``path``.

    Args:
        path: A run directory, its ``final`` directory, a checkpoint directory,
            or any local HF model directory.
        **agent_kwargs: Passed to the agent (``sampling=...``).

    Raises:
        FileNotFoundError: Nothing loadable at ``path``, or the base model of an
            adapter or checkpoint is gone.
        CheckpointError: A checkpoint's weights do not fit its base model.
    """
    where = resolve_policy_dir(path)
    if (where / "trainer.json").is_file():
        return _from_checkpoint(where, **agent_kwargs)
    if (where / "adapter_config.json").is_file():
        config = json.loads((where / "adapter_config.json").read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise FileNotFoundError(
                f"{where}: the adapter's base model {base!r} is not a local directory"
            )
        agent = TransformersAgent.from_pretrained(base, **agent_kwargs)
        agent.model = load_adapter(agent.model, where).eval()
        return agent
    return TransformersAgent.from_pretrained(where, **agent_kwargs)


def export_policy(path: str | Path, out: str | Path, *, merge: bool = True) -> Path:
    """Write the policy at ``path`` as a Hugging Face model directory ``out``.

    Args:
        path: Anything :func:`load_policy` takes.
        out: The directory to write (model, tokenizer, generation config).
        merge: Merge LoRA adapters into the weights (a plain model); False
            writes the adapter alone.

    Returns:
        ``out``.

    Raises:
        FileExistsError: ``out`` is a file or a directory that is not empty
            (nothing is overwritten).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        kind = "directory is not empty" if out.is_dir() else "is a file"
        raise FileExistsError(f"{out} already exists and {kind}; give a new directory")
    agent = load_policy(path)
    model = merged_copy(agent.model) if merge and is_peft_model(agent.model) else agent.model
    model.save_pretrained(out)
    agent.tokenizer.save_pretrained(out)
    return out


def _from_checkpoint(where: Path, **agent_kwargs: Any) -> TransformersAgent:
    from pydantic import ValidationError
    from safetensors.torch import load_model

    from turnrl.training.config import TrainingConfig

    read_trainer_state(where)  # a damaged checkpoint is named before the model loads
    data = read_checkpoint_config(where)
    fields = TrainingConfig.model_fields
    try:
        config = TrainingConfig.model_validate({k: v for k, v in data.items() if k in fields})
    except ValidationError as e:
        raise CheckpointError(f"{where / 'config.json'}: not a turnrl config ({e})") from None
    base = config.model.path if config.model.path is not None else tiny_model_path()
    agent = TransformersAgent.from_pretrained(base, dtype=config.model.dtype, **agent_kwargs)
    if config.model.lora is not None:
        agent.model = add_lora(agent.model, config.model.lora)
    weights = where / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {where} is incomplete: model.safetensors is missing")
    try:
        load_model(agent.model, str(weights), strict=True)
    except Exception as e:  # misshapen tensors, or not a safetensors file at all
        first = str(e).strip().splitlines()[0][:300]
        raise CheckpointError(f"{weights}: cannot load the weights ({first})") from None
    agent.model.eval()
    return agent


def _is_hf_dir(path: Path) -> bool:
    if (path / "adapter_config.json").is_file():
        return True
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
