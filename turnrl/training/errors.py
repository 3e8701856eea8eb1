"""The errors training raises that a user acts on (the CLI prints them without a traceback)."""

from __future__ import annotations

import signal
from pathlib import Path

import structlog

from turnrl.training.checkpoint import CheckpointError

log = structlog.get_logger(__name__)


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


class NonFiniteStreak:
    """Counts updates skipped for a non-finite gradient; ``limit`` in a row stop the run."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0

    def update(self, skipped: bool, step: int) -> None:
        """Record whether ``step``'s update was skipped.

        Raises:
            NonFiniteError: The ``limit``-th skipped update in a row.
        """
        self.count = self.count + 1 if skipped else 0
        if skipped:
            log.warning("nonfinite_gradient", step=step, action="update skipped")
        if self.count >= self.limit:
            raise NonFiniteError(
                f"{self.count} steps in a row (up to step {step}) had a non-finite loss or "
                f"gradient and were skipped; the weights are those of step {step - self.count}. "
                "Lower optim.lr, check the rewards for NaN/inf, or use precision='fp32'"
            )
