"""Callbacks: code of yours that :meth:`Trainer.train` runs at fixed points of the loop.

Subclass :class:`Callback`, override the hooks you need (each is a no-op by
default) and pass instances as ``Trainer(..., callbacks=[...])``. The hooks, in
the order a run meets them:

- ``on_train_begin(trainer)``: before the evaluation ahead of training.
- ``on_evaluate(trainer, metrics)``: after each evaluation in :meth:`Trainer.train`
  (the one before training included), with its ``eval/*`` metrics and their
  ``_stderr``; a direct call of :meth:`Trainer.evaluate` runs no callback.
- ``on_step_end(trainer, metrics)``: after each step, once its metrics
  (evaluation included) are logged.
- ``on_save(trainer, path)``: after each resumable checkpoint is written.
- ``on_train_end(trainer, summary)``: after a run that ended normally (at
  ``run.max_steps`` or stopped by a callback), once ``final/`` is saved; not after
  an interruption or an error.

A callback stops the run with ``trainer.control.stop("why")``: the loop ends
after the step in flight as if it had reached ``run.max_steps`` (evaluation of the
last step if it had none, checkpoint, ``final/``), and ``train()`` reports the
reason as ``stopped_by``. ``check(trainer)`` runs in the Trainer's constructor,
before the run directory is touched: raise there to refuse a setup.

A callback that keeps state across steps (a best value, a counter) returns it
from ``state_dict`` (JSON-serializable) and takes it back in ``load_state_dict``;
checkpoints store it, so a resumed run decides as the uninterrupted one would.

An exception raised by a callback propagates out of ``train()`` unchanged, after
a checkpoint of the last completed step is written (unless one holds it
already), so nothing trained is lost: fix the callback and resume. Under
torchrun callbacks run on every rank (``trainer.dist.is_main`` is rank 0); a stop
asked on any rank stops them all at the same step.

The built-in behaviours are callbacks too. Each hook runs them in this order:
the progress bar; :class:`EarlyStopping` (``eval.patience``) and :class:`KeepBest`
(``eval.keep_best``) when the ``eval`` config section asks for them; yours, in the
order given; the checkpoint writer last, so ``on_save`` follows every
``on_step_end`` and a stop asked there still gets its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

from turnrl.progress import Progress
from turnrl.training.evaluation import STDERR, metric_key

if TYPE_CHECKING:
    from turnrl.training.trainer import Trainer

log = structlog.get_logger(__name__)


@dataclasses.dataclass
class TrainerControl:
    """What callbacks ask of the loop.

    Attributes:
        should_stop: End the run after the step in flight.
        reason: Why (reported by ``train()`` as ``stopped_by``).
    """

    should_stop: bool = False
    reason: str | None = None

    def stop(self, reason: str) -> None:
        """Ask the loop to end after the step in flight, saying why."""
        self.should_stop, self.reason = True, reason


class Callback:
    """Base class of callbacks: every hook does nothing (see the module docstring)."""

    def check(self, trainer: Trainer) -> None:
        """Raise ``ValueError`` if this callback cannot work with ``trainer``."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """The run starts (after a resume's state is loaded)."""

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """An evaluation at ``trainer.step_count`` gave ``metrics`` (``eval/*``)."""

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Step ``trainer.step_count`` is done and its ``metrics`` are logged."""

    def on_save(self, trainer: Trainer, path: Path) -> None:
        """A checkpoint of ``trainer.step_count`` was written to ``path``."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """The run ended normally; ``summary`` is what ``train()`` returns."""

    def state_dict(self) -> dict[str, Any]:
        """State to store in checkpoints (JSON-serializable); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned."""


class CallbackList:
    """Runs each hook on every callback in order; on an exception, ``on_error`` first.

    Args:
        callbacks: The callbacks.
        on_error: Called once when a callback raises, before the exception
            propagates (the trainer writes a checkpoint). Hooks called while it
            runs are skipped.
    """

    def __init__(self, callbacks: Iterable[Callback], on_error: Callable[[], Any]) -> None:
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"callbacks must be turnrl Callback instances, got {callback!r}; "
                    "subclass turnrl.Callback and pass an instance"
                )
        self._on_error = on_error
        self._failing = False

    def fire(self, hook: str, trainer: Trainer, *args: Any) -> None:
        """Call ``hook`` (``on_step_end``...) on every callback."""
        if self._failing:
            return
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(trainer, *args)
            except Exception:
                name = type(callback).__name__
                log.error("callback_failed", callback=name, hook=hook, step=trainer.step_count)
                self._failing = True
                try:
                    self._on_error()
                except Exception as e:  # the callback's own exception is the one to report
                    log.error("checkpoint_after_callback_failed", error=repr(e))
                finally:
                    self._failing = False
                raise

    def state_dict(self) -> dict[str, Any]:
        """Each stateful callback's state, keyed by :meth:`names`."""
        pairs = zip(self.names(), self.callbacks, strict=True)
        return {name: state for name, callback in pairs if (state := callback.state_dict())}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Give each callback its state back (callbacks the checkpoint lacks keep theirs)."""
        for name, callback in zip(self.names(), self.callbacks, strict=True):
            if name in states:
                callback.load_state_dict(states[name])

    def names(self) -> list[str]:
        """Each callback's class name (``#2``, ``#3``... on repeats).

        Names rather than positions, so a state finds its callback on a resume that
        adds or removes others.
        """
        seen: dict[str, int] = {}
        names = []
        for callback in self.callbacks:
            kind = type(callback).__name__
            seen[kind] = seen.get(kind, 0) + 1
            names.append(kind if seen[kind] == 1 else f"{kind}#{seen[kind]}")
        return names


class ProgressBar(Callback):
    """The live progress bar (:mod:`turnrl.progress`), drawn as ``run.progress`` says."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Draw the bar from the step the run starts at."""
        run = trainer.config.run
        trainer.progress = Progress(
            run.max_steps,
            initial=trainer.step_count,
            enabled=run.progress if trainer.dist.is_main else False,
            eval_key=metric_key(trainer.config.eval),
        )

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Advance the bar."""
        trainer.progress.step_done(metrics)

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Remove the bar."""
        trainer.progress.close()


class PeriodicCheckpoints(Callback):
    """A checkpoint every ``run.checkpoint_every`` steps and at the last step.

    It runs after every other callback, so a stop asked in any ``on_step_end``
    still gets its checkpoint, and ``on_save`` follows ``on_step_end`` as in
    Hugging Face's Trainer.
    """

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Checkpoint every ``run.checkpoint_every`` steps and when the run ends."""
        every, step = trainer.config.run.checkpoint_every, trainer.step_count
        last = step == trainer.config.run.max_steps or trainer.control.should_stop
        if every and (last or step % every == 0):
            trainer.save_checkpoint()


class _EvalMetricCallback(Callback):
    """Follows the best value of an eval metric (default: ``eval.metric``/``eval.mode``)."""

    def __init__(
        self, metric: str | None, mode: Literal["max", "min"] | None, min_delta: float
    ) -> None:
        if mode not in (None, "max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.metric, self.mode, self.min_delta = metric, mode, min_delta
        self.best: float | None = None
        self.best_step: int | None = None

    def check(self, trainer: Trainer) -> None:
        """Fill in the metric and mode from ``eval``; refuse a run without held-out scenarios."""
        if not trainer.eval_scenarios:
            raise ValueError(
                f"{type(self).__name__} needs held-out scenarios to evaluate: pass "
                "Trainer(eval_scenarios=...) (in an experiment file: scenarios.eval, eval_size "
                "or eval_fraction)"
            )
        ev = trainer.config.eval
        self.metric = metric_key(ev) if self.metric is None else self.metric
        self.metric = self.metric if self.metric.startswith("eval/") else f"eval/{self.metric}"
        self.mode = self.mode or ev.mode

    def improved(self, trainer: Trainer, metrics: dict[str, Any]) -> bool:
        """Whether ``metrics`` beat the best by more than ``min_delta`` (then it is the best)."""
        value = metrics.get(self.metric)
        if not isinstance(value, int | float):
            return False  # every episode failed: no value, no improvement
        if self.best is not None:
            gain = value - self.best if self.mode == "max" else self.best - value
            if gain <= self.min_delta:
                return False
        self.best, self.best_step = float(value), trainer.step_count
        return True

    def state_dict(self) -> dict[str, Any]:
        """The best value so far and its step."""
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the best value and its step."""
        self.best, self.best_step = state.get("best"), state.get("best_step")


class EarlyStopping(_EvalMetricCallback):
    """End the run when ``patience`` evaluations in a row do not improve the metric.

    An improvement is a change by more than ``min_delta`` in the ``mode``'s
    direction over the best so far. The evaluation before training sets the
    first best value.

    Args:
        patience: Evaluations without improvement that end the run (>= 1).
        min_delta: Least change that counts as an improvement.
        metric: The eval metric (``reward_mean`` or ``eval/reward_mean``);
            default ``eval.metric``.
        mode: ``"max"`` or ``"min"``; default ``eval.mode``.
    """

    def __init__(
        self,
        patience: int,
        min_delta: float = 0.0,
        *,
        metric: str | None = None,
        mode: Literal["max", "min"] | None = None,
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        super().__init__(metric, mode, min_delta)
        self.patience = patience
        self.bad_evals = 0

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Count evaluations without improvement; ask to stop at ``patience``."""
        self.bad_evals = 0 if self.improved(trainer, metrics) else self.bad_evals + 1
        if self.bad_evals >= self.patience:
            reason = (
                f"early stopping: {self.metric} did not improve by more than {self.min_delta:g} "
                f"in {self.bad_evals} evaluations (best {self.best} at step {self.best_step})"
            )
            log.info("early_stopping", step=trainer.step_count, reason=reason)
            trainer.control.stop(reason)

    def state_dict(self) -> dict[str, Any]:
        """The best value, its step and the evaluations since."""
        return super().state_dict() | {"bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the best value, its step and the count."""
        super().load_state_dict(state)
        self.bad_evals = int(state.get("bad_evals", 0))


class KeepBest(_EvalMetricCallback):
    """Keep the policy with the best eval metric in ``<run_dir>/best``.

    Whenever an evaluation beats the best so far (by more than ``min_delta``),
    the policy is saved with ``save_pretrained`` (with LoRA, the adapter, as in
    ``final/``) and ``best.json`` records the step, metric, value and stderr.
    The folder is written beside and renamed into place, so a crash leaves the
    previous best or the new one. The evaluation before training counts: if
    training never beats it, ``best/`` holds the starting policy.

    Args:
        metric: The eval metric; default ``eval.metric``.
        mode: ``"max"`` or ``"min"``; default ``eval.mode``.
        min_delta: Least change that counts as an improvement.
    """

    def __init__(
        self,
        *,
        metric: str | None = None,
        mode: Literal["max", "min"] | None = None,
        min_delta: float = 0.0,
    ) -> None:
        super().__init__(metric, mode, min_delta)

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Save the policy to ``best/`` if it is the best so far."""
        if not self.improved(trainer, metrics) or not trainer.dist.is_main:
            return
        best, tmp = trainer.run_dir / "best", trainer.run_dir / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.save(tmp)
        record = {
            "step": trainer.step_count,
            "metric": self.metric,
            "value": self.best,
            "stderr": metrics.get(f"{self.metric}{STDERR}"),
        }
        (tmp / "best.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        old = trainer.run_dir / ".best.old"
        shutil.rmtree(old, ignore_errors=True)
        if best.exists():
            best.rename(old)
        tmp.rename(best)
        shutil.rmtree(old, ignore_errors=True)
        log.info("best_saved", step=trainer.step_count, metric=self.metric, value=self.best)


def _checkpoint_if_trained(trainer: Trainer) -> None:
    if trainer.step_count > 0:  # at step 0 there is nothing to lose
        trainer.save_checkpoint()


def trainer_callbacks(trainer: Trainer, user: Iterable[Callback]) -> CallbackList:
    """The progress bar, what the ``eval`` section asks for, ``user``'s, then checkpoints.

    Each is checked. On a callback's exception the trainer writes a checkpoint of
    its last step (if it took one).
    """
    ev = trainer.config.eval
    callbacks: list[Callback] = [ProgressBar()]
    if ev.patience is not None:
        callbacks.append(EarlyStopping(ev.patience, ev.min_delta))
    if ev.keep_best:
        callbacks.append(KeepBest(min_delta=ev.min_delta))
    callbacks += [*user, PeriodicCheckpoints()]
    out = CallbackList(callbacks, on_error=lambda: _checkpoint_if_trained(trainer))
    for callback in out.callbacks:
        callback.check(trainer)
    return out
