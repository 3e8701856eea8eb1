"""The errors training raises that a user acts on (the CLI prints them without a traceback)."""

from __future__ import annotations

import signal
from pathlib import Path

from turnrl.training.checkpoint import CheckpointError


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after a step, with a checkpoint to resume from.

    Attributes:
        signum: The signal.
        step: The last completed step.
        checkpoint: The checkpoint holding that step (None on ranks other than 0).
        exit_code: ``128 + signum``, the shell's convention (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint "
            f"{checkpoint}; resume with Trainer(..., resume=True) or turnrl train --resume"
        )


class ResumeConfigError(CheckpointError, ValueError):
    """The config of a resumed run differs from its checkpoint's in a setting that matters."""


class RolloutFailureError(RuntimeError):
    """Too many episodes of a step failed (environment, agent or reward errors)."""


class NonFiniteError(FloatingPointError):
    """The loss or gradients stayed non-finite for several steps in a row."""
