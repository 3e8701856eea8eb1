"""Resumable checkpoints, written atomically.

A checkpoint is a directory ``<run_dir>/checkpoints/step-000010`` holding
everything the next step depends on:

- ``model.safetensors``: every weight of the policy (with LoRA: the base model
  and the adapters);
- ``value_model.safetensors`` when there is a critic;
- ``reference.safetensors`` when the KL reference is a copy of the starting
  model (it may differ from any model on disk, e.g. after a warm-start; every
  checkpoint of a run hard-links the same file when it can). With LoRA the
  reference is the base model under the adapters, already in
  ``model.safetensors``;
- ``optimizer.pt``: optimizer, LR schedule and GradScaler states (tensors and
  plain containers only);
- ``rng.pt``: the python, numpy, torch (and CUDA) generator states;
- ``trainer.json``: the step count, the position in the scenario order and the
  callbacks' states (early stopping's best value and count...);
- ``config.json``: the configuration it was written with.

It is written into a temporary sibling directory and renamed into place, so a
process killed at any moment leaves the previous checkpoint or the new one,
never half of one; only then are checkpoints beyond ``keep`` removed.

Only directories named ``step-N`` are checkpoints; anything else under
``checkpoints/`` (a ``step-best`` copied by hand) is ignored. Loading never
unpickles code: weights come from safetensors, the rest through
``torch.load(weights_only=True)``. A missing, unreadable or mismatched file is
a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
import torch
from safetensors.torch import load_model, save_model

from turnrl.training.config_files import read_json_object

if TYPE_CHECKING:
    from turnrl.training.config import TrainingConfig
    from turnrl.training.models import TrainingModels
    from turnrl.training.optim import Optimization

log = structlog.get_logger(__name__)

PREFIX = "step-"
_NAME = re.compile(rf"{PREFIX}(\d+)")
REFERENCE = "reference.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the trainer."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run's checkpoints live."""
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=step_of)


def step_of(checkpoint: str | Path) -> int:
    """The step a ``step-N`` checkpoint directory was written at."""
    return int(Path(checkpoint).name[len(PREFIX) :])


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: str | Path,
    models: TrainingModels,
    optim: Optimization,
    config: TrainingConfig,
    state: dict[str, Any],
    *,
    keep: int = 2,
    reference_file: Path | None = None,
) -> Path:
    """Write a run's state as ``checkpoints/step-NNNNNN``; keep the newest ``keep``.

    Args:
        run_dir: The run directory.
        models: The policy, critic and reference to save.
        optim: Optimizer, schedule and scaler.
        config: The configuration in force (saved beside the weights).
        state: The trainer's own state (:meth:`Trainer.state_dict`: ``step``,
            ``order``, ``order_rng``).
        keep: How many checkpoints to keep.
        reference_file: The run's previously saved reference weights, hard-linked
            instead of written again (the reference never changes).
    """
    bad = [n for n, p in models.policy.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights (first: {bad[0]})")
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{state['step']:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_model(models.policy, str(tmp / "model.safetensors"))
        if models.value_model is not None:
            models.value_model.save(tmp)
        reference = reference_copy(models)
        if reference is not None:
            _save_reference(reference, tmp / REFERENCE, reference_file)
        torch.save(
            {
                "optimizer": optim.optimizer.state_dict(),
                "scheduler": optim.scheduler.state_dict(),
                "scaler": optim.scaler.state_dict(),
            },
            tmp / "optimizer.pt",
        )
        torch.save(_rng_state(), tmp / "rng.pt")
        state = state | {"order_rng": _python_state(state["order_rng"])}
        (tmp / "trainer.json").write_text(json.dumps(state), encoding="utf-8")
        config.save(tmp / "config.json")
        _fsync_tree(tmp)
        if keep >= 2:
            # Make room before the new one appears, so a kill at any moment leaves at most
            # `keep` checkpoints, the newest complete one among them.
            for old in [c for c in list_checkpoints(run_dir) if c != final][: 1 - keep]:
                shutil.rmtree(old, ignore_errors=True)
        if final.exists():  # the same step saved again: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | Path, models: TrainingModels, optim: Optimization
) -> dict[str, Any]:
    """Restore the models, optimizer and random generators from a checkpoint directory.

    Restores the policy, the critic, the KL reference (when the checkpoint holds
    one), the optimizer and the python/numpy/torch generators.

    Returns:
        The trainer's state (``step``, ``order``, ``order_rng``; see
        :func:`read_trainer_state`), for :meth:`Trainer.load_state_dict`.

    Raises:
        CheckpointError: A file is missing or unreadable, or the weights do not
            fit the models.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    info = read_trainer_state(path)
    _load_weights(models.policy, path / "model.safetensors")
    if models.value_model is not None:
        _load_weights(models.value_model, path / "value_model.safetensors")
    reference = reference_copy(models)
    if reference is not None:
        if (path / REFERENCE).is_file():
            _load_weights(reference, path / REFERENCE)
        else:  # written before checkpoints held the reference
            log.warning(
                "reference_not_in_checkpoint",
                checkpoint=str(path),
                action="the KL reference is the model the trainer was built with",
            )
    optim_state = _load(path / "optimizer.pt")
    try:
        optim.optimizer.load_state_dict(optim_state["optimizer"])
        optim.scheduler.load_state_dict(optim_state["scheduler"])
        optim.scaler.load_state_dict(optim_state["scaler"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path / 'optimizer.pt'} does not fit the optimizer: {e}") from None
    rng_file = path / "rng.pt"
    try:
        _set_rng_state(_load(rng_file))
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{rng_file}: not a generator state ({e})") from None
    return info


def apply_optim_settings(optim: Optimization, fresh: Optimization) -> None:
    """Give a restored optimizer the lr, weight decay and betas of ``fresh`` (a forced resume).

    Loading an optimizer's state brings back the hyperparameters it was saved
    with; this puts the new config's back, with the lr at the restored
    schedule position.
    """
    scheduler, groups = optim.scheduler, optim.optimizer.param_groups
    for group, new in zip(groups, fresh.optimizer.param_groups, strict=True):
        for key in ("weight_decay", "betas", "initial_lr"):
            group[key] = new[key]
    scheduler.base_lrs = list(fresh.scheduler.base_lrs)
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """The checked contents of a checkpoint's ``trainer.json``.

    Returns:
        ``step`` (int), ``order`` (list of scenario indices), ``order_rng``
        (a ``random.Random`` state) and ``callbacks`` (the callbacks' states;
        empty for a checkpoint written before callbacks kept any).

    Raises:
        CheckpointError: The file is missing, not JSON, or holds other values.
    """
    file = Path(path) / "trainer.json"
    _require(file, Path(path))
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
        step, order = info["step"], info["order"]
        order_rng = _python_tuple(info["order_rng"])
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        if not isinstance(order, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in order
        ):
            raise ValueError("order must be a list of scenario indices")
        random.Random().setstate(order_rng)
        callbacks = info.get("callbacks", {})
        if not isinstance(callbacks, dict):
            raise ValueError("callbacks must be a mapping of callback states")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{file}: expected {{step, order, order_rng}} as the trainer writes them ({e})"
        ) from None
    return {"step": step, "order": order, "order_rng": order_rng, "callbacks": callbacks}


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The configuration a checkpoint was written with, as the JSON mapping it holds.

    Raises:
        CheckpointError: ``config.json`` is missing or not a JSON object.
    """
    file = Path(path) / "config.json"
    _require(file, Path(path))
    return read_json_object(file, CheckpointError)


def reference_copy(models: TrainingModels) -> torch.nn.Module | None:
    """The KL reference when it is a model of its own (not LoRA's base), else None."""
    reference = models.reference
    return reference if isinstance(reference, torch.nn.Module) else None


def saved_reference(checkpoint: str | Path, models: TrainingModels) -> Path | None:
    """The reference weights file of ``checkpoint`` when the run keeps a reference copy."""
    file = Path(checkpoint) / REFERENCE
    return file if reference_copy(models) is not None and file.is_file() else None


def _save_reference(reference: torch.nn.Module, file: Path, previous: Path | None) -> None:
    """Write the reference, or hard-link the run's previous copy: it never changes."""
    if previous is not None and Path(previous).is_file():
        try:
            os.link(previous, file)
            return
        except OSError:  # no hard links on this filesystem: write a copy
            pass
    save_model(reference, str(file))


def _load_weights(module: torch.nn.Module, file: Path) -> None:
    _require(file, file.parent)
    try:
        load_model(module, str(file), strict=True)
    except RuntimeError as e:  # missing / unexpected / misshapen tensors
        first = str(e).strip().splitlines()[0][:300]
        raise CheckpointError(f"{file} does not fit the model: {first}") from None
    except Exception as e:
        raise CheckpointError(f"{file}: cannot read the weights ({e})") from None


def _require(file: Path, checkpoint: Path) -> None:
    if not file.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} is incomplete: {file.name} is missing")


def _load(file: Path) -> Any:
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file.parent} is incomplete: {file.name} is missing")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{file}: cannot be read safely ({type(e).__name__}: {e})") from None


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": _python_state(random.getstate()),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_python_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_tuple(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _fsync_tree(root: Path) -> None:
    """Flush every file so the rename publishes complete data."""
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
