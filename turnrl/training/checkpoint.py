"""Resumable checkpoints, written atomically.

A checkpoint is a directory ``<run_dir>/checkpoints/step-000010`` holding
everything the next step depends on:

- ``model.safetensors``: every weight of the policy (with LoRA: the base model
  and the adapters);
- ``value_model.safetensors`` when there is a critic;
- ``optimizer.pt``: optimizer, LR schedule and GradScaler states (tensors and
  plain containers only);
- ``rng.pt``: the python, numpy, torch (and CUDA) generator states;
- ``trainer.json``: the step count and the position in the scenario order;
- ``config.json``: the configuration it was written with.

It is written into a temporary sibling directory and renamed into place, so a
process killed at any moment leaves the previous checkpoint or the new one,
never half of one; only then are checkpoints beyond ``keep`` removed.

Loading never unpickles code: weights come from safetensors, the rest through
``torch.load(weights_only=True)``. A missing or mismatched file is a
:class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

if TYPE_CHECKING:
    from turnrl.training.trainer import Trainer

PREFIX = "step-"


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
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(trainer: Trainer, *, keep: int = 2) -> Path:
    """Write the trainer's state as ``checkpoints/step-NNNNNN``; keep the newest ``keep``."""
    bad = [n for n, p in trainer.policy.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights (first: {bad[0]})")
    root = checkpoint_dir(trainer.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{trainer.step_count:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_model(trainer.policy, str(tmp / "model.safetensors"))
        if trainer.value_model is not None:
            trainer.value_model.save(tmp)
        optim = trainer.optim
        torch.save(
            {
                "optimizer": optim.optimizer.state_dict(),
                "scheduler": optim.scheduler.state_dict(),
                "scaler": optim.scaler.state_dict(),
            },
            tmp / "optimizer.pt",
        )
        torch.save(_rng_state(), tmp / "rng.pt")
        state = {
            "step": trainer.step_count,
            "order": trainer._order,
            "order_rng": _python_state(trainer._rng.getstate()),
        }
        (tmp / "trainer.json").write_text(json.dumps(state), encoding="utf-8")
        trainer.config.save(tmp / "config.json")
        _fsync_tree(tmp)
        if keep >= 2:
            # Make room before the new one appears, so a kill at any moment leaves at most
            # `keep` checkpoints, the newest complete one among them.
            for old in [c for c in list_checkpoints(trainer.run_dir) if c != final][: 1 - keep]:
                shutil.rmtree(old, ignore_errors=True)
        if final.exists():  # the same step saved again: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(trainer.run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(trainer: Trainer, path: str | Path) -> int:
    """Restore ``trainer`` from a checkpoint directory; returns the step it was written at.

    Raises:
        CheckpointError: A file is missing or unreadable, or the weights do not
            fit the trainer's model.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    weights = path / "model.safetensors"
    _require(weights, path)
    try:
        load_model(trainer.policy, str(weights), strict=True)
    except RuntimeError as e:  # missing / unexpected / misshapen tensors
        first = str(e).strip().splitlines()[0][:300]
        raise CheckpointError(f"{weights} does not fit the model: {first}") from None
    except Exception as e:
        raise CheckpointError(f"{weights}: cannot read the weights ({e})") from None
    if trainer.value_model is not None:
        value_file = path / "value_model.safetensors"
        _require(value_file, path)
        trainer.value_model.load(value_file)
    optim_state = _load(path / "optimizer.pt")
    try:
        trainer.optim.optimizer.load_state_dict(optim_state["optimizer"])
        trainer.optim.scheduler.load_state_dict(optim_state["scheduler"])
        trainer.optim.scaler.load_state_dict(optim_state["scaler"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path / 'optimizer.pt'} does not fit the optimizer: {e}") from None
    _set_rng_state(_load(path / "rng.pt"))
    trainer_file = path / "trainer.json"
    _require(trainer_file, path)
    info = json.loads(trainer_file.read_text(encoding="utf-8"))
    trainer.step_count = int(info["step"])
    trainer._order = list(info["order"])
    trainer._rng.setstate(_python_tuple(info["order_rng"]))
    return trainer.step_count


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
