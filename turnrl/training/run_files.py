"""What a live Trainer holds in its run directory: the lock, config.json, metrics, checkpoints.

:class:`RunFiles` is rank 0's writer (other ranks hold one that writes
nothing): it locks the directory for the trainer's life, claims it fresh or
resumes from one of its checkpoints, opens the metrics sink, and writes
checkpoints and the closing files (final model, plot). The rules it applies
(what a fresh claim refuses, which config changes a resume accepts) are in
:mod:`.rundir` and :mod:`.resume`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from turnrl.logging import MetricsLogger, NullMetrics, init_wandb
from turnrl.plots import try_plot_run
from turnrl.training import rundir
from turnrl.training.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    save_checkpoint,
    saved_reference,
    step_of,
)
from turnrl.training.config import TrainingConfig
from turnrl.training.evaluation import metric_key
from turnrl.training.models import TrainingModels
from turnrl.training.optim import Optimization
from turnrl.training.resume import resume_run
from turnrl.training.rundir import RunLock
from turnrl.types import Trajectory, save_jsonl


class RunFiles:
    """The run directory ``config.run.output_dir`` of one trainer.

    Args:
        config: The run's configuration.
        is_main: Whether this process writes (rank 0).
    """

    def __init__(self, config: TrainingConfig, *, is_main: bool) -> None:
        self.config = config
        self.path = Path(config.run.output_dir)
        self.is_main = is_main
        self.metrics: MetricsLogger | NullMetrics = NullMetrics()
        self.resumed_from: Path | None = None
        self._lock = RunLock(self.path)
        self._reference_file: Path | None = None  # the run's saved reference weights

    def open(
        self,
        resume: bool | str | Path,
        models: TrainingModels,
        optim: Optimization,
        *,
        force_resume: bool,
    ) -> dict[str, Any] | None:
        """Lock the directory, resume from it or claim it fresh, open the metrics.

        Returns:
            The trainer's state from the checkpoint when resuming, else None.

        Raises:
            RunDirError: The directory is in use, not empty, or not writable.
            CheckpointError: The checkpoint is missing, broken, or does not fit.
        """
        try:
            if self.is_main:
                self._lock.acquire()
                rundir.clean_stale_temps(checkpoint_dir(self.path))
            state = None
            if resume:
                self.resumed_from, state = resume_run(
                    self.path,
                    resume,
                    self.config,
                    models,
                    optim,
                    is_main=self.is_main,
                    force=force_resume,
                )
                self._reference_file = saved_reference(self.resumed_from, models)
            elif self.is_main:
                rundir.claim_fresh(self.path, overwrite=self.config.run.overwrite)
                self.config.save(self.path / "config.json")
            if self.is_main:
                wandb_run = init_wandb(self.config.wandb, self.path, self.config.model_dump())
                self.metrics = MetricsLogger(
                    self.path,
                    wandb_run=wandb_run,
                    append=bool(resume),
                    eval_key=metric_key(self.config.eval),
                )
            return state
        except BaseException:
            self._lock.release()
            raise

    def save_checkpoint(
        self, models: TrainingModels, optim: Optimization, state: dict[str, Any]
    ) -> Path | None:
        """Write a checkpoint of ``state["step"]`` (rank 0; None elsewhere)."""
        if not self.is_main:
            return None
        path = save_checkpoint(
            self.path,
            models,
            optim,
            self.config,
            state,
            keep=self.config.run.keep_checkpoints,
            reference_file=self._reference_file,
        )
        self._reference_file = saved_reference(path, models)
        return path

    def save_eval_samples(self, step: int, trajectories: Sequence[Trajectory]) -> None:
        """Write an evaluation's episodes to ``eval_samples.jsonl`` and wandb (rank 0)."""
        if self.is_main:
            save_jsonl(trajectories, self.path / "eval_samples.jsonl")
            self.metrics.log_samples(step, trajectories, table="eval/samples")

    def checkpoint_of(self, step: int) -> Path | None:
        """The checkpoint of ``step`` if the latest one holds it (rank 0)."""
        latest = latest_checkpoint(self.path) if self.is_main else None
        return latest if latest is not None and step_of(latest) == step else None

    def finish(self) -> None:
        """Close the metrics and draw the plot (if ``run.plot``)."""
        self.metrics.close()
        if self.config.run.plot and self.is_main:
            try_plot_run(self.path)

    def release(self) -> None:
        """Release the directory's lock."""
        self._lock.release()
