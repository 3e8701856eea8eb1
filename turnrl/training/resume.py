"""Resuming a run: which checkpoint, and whether the config still fits it.

A resumed run continues exactly when it is built from the same starting model
and config as the original; :func:`check_resume_config` compares the configs
and refuses a change to a setting that changes training unless forced (the
settings that cannot change training are :data:`turnrl.training.rundir.HARMLESS`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from turnrl.training import rundir
from turnrl.training.checkpoint import (
    CheckpointError,
    apply_optim_settings,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_config,
)
from turnrl.training.config import TrainingConfig
from turnrl.training.errors import ResumeConfigError
from turnrl.training.models import TrainingModels
from turnrl.training.optim import Optimization, make_optimization

log = structlog.get_logger(__name__)

Changes = dict[str, tuple[Any, Any]]


def find_checkpoint(run_dir: Path, resume: bool | str | Path) -> Path:
    """The checkpoint ``resume`` names: the run's latest (True) or a directory.

    Raises:
        CheckpointError: The run has no checkpoint, or the directory does not exist.
    """
    if resume is True:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise CheckpointError(
                f"resume=True but {checkpoint_dir(run_dir)} has no checkpoint (set "
                "run.checkpoint_every to write them); start afresh with --overwrite "
                "(run.overwrite=true)"
            )
        return path
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    return path


def check_resume_config(
    checkpoint: Path, config: TrainingConfig, *, force: bool
) -> tuple[Changes, Changes]:
    """The settings that differ from the checkpoint's, and those of them that change training.

    Raises:
        ResumeConfigError: A setting that changes training differs and ``force`` is False.
    """
    recorded = read_checkpoint_config(checkpoint)
    # A section newer than the checkpoint ran as its defaults then (the mismatch section).
    defaults = TrainingConfig().model_dump(mode="json")
    for name in ("mismatch",):
        recorded.setdefault(name, defaults[name])
    changes = rundir.config_changes(recorded, json.loads(config.model_dump_json()))
    refused = rundir.breaking(changes)
    if refused and not force:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ResumeConfigError(
            f"cannot resume {checkpoint} exactly: the config differs from the checkpoint's in "
            f"settings that change training ({listed}). Restore them, or pass "
            "--force-resume (Trainer(force_resume=True)) to apply the new values from "
            "the checkpoint's step on"
        )
    return changes, refused


def resume_run(
    run_dir: Path,
    resume: bool | str | Path,
    config: TrainingConfig,
    models: TrainingModels,
    optim: Optimization,
    *,
    is_main: bool,
    force: bool,
) -> tuple[Path, dict[str, Any]]:
    """Load a checkpoint into ``models`` and ``optim`` after checking the run and the config.

    Metrics logged after the checkpoint (by the run that went on past it) are
    dropped; the run's ``config.json`` becomes the config in force, and
    ``config_history.jsonl`` records what changed (rank 0 writes).

    Returns:
        The checkpoint, and the trainer's state for :meth:`Trainer.load_state_dict`.
    """
    path = find_checkpoint(run_dir, resume)
    abandoned = []
    if is_main:
        abandoned = rundir.check_resume_target(run_dir, path, overwrite=config.run.overwrite)
    changes, refused = check_resume_config(path, config, force=force)
    state = load_checkpoint(path, models, optim)
    if refused:  # the optimizer state brought back the old lr, betas and weight decay
        apply_optim_settings(optim, make_optimization(models.policy, config, models.value_model))
    if is_main:
        rundir.record_resume(
            run_dir, path, state["step"], changes, forced=bool(refused), abandoned=abandoned
        )
        config.save(run_dir / "config.json")
    log.info("resumed", step=state["step"], checkpoint=str(path), changed=sorted(changes) or None)
    if "run.max_steps" in changes:
        _report_max_steps(*changes["run.max_steps"], step=state["step"], config=config)
    return path, state


def _report_max_steps(old: int, new: int, *, step: int, config: TrainingConfig) -> None:
    """Say what a changed ``run.max_steps`` does to the resumed run."""
    if new <= step:
        log.warning(
            "max_steps_changed",
            old=old,
            new=new,
            effect=f"nothing to train: the checkpoint is at step {step}; set run.max_steps "
            f"above {step} to train on",
        )
        return
    effect = f"training continues from step {step} to step {new}"
    if config.optim.min_lr_ratio < 1:
        # The cosine decay is a function of max_steps: the lr of every later step moves.
        effect += f"; the cosine lr decay now ends at step {new}, not {old}"
    log.warning("max_steps_changed", old=old, new=new, effect=effect)
