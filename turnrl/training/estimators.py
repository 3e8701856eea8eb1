"""Turning ``algorithm.estimator`` into an advantage estimator, with errors that say why not.

``algorithm.estimator`` is a name in :data:`~turnrl.training.algorithms.ALGORITHMS`
or an import path ``package.module:factory``, a function that takes the
:class:`~turnrl.training.config.AlgorithmConfig` and returns an estimator (a callable
``(batch, values=None) -> advantages``). An import path is only a string until it is
imported and called, so config loading (:func:`check_estimator`) and the Trainer
(:func:`build_estimator`) both build it, to refuse ``builtins:print`` or a factory
returning ``None`` before any rollout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from turnrl.training.advantages import AdvantageEstimator
from turnrl.training.algorithms import ALGORITHMS, estimator_factory

if TYPE_CHECKING:
    from turnrl.training.config import AlgorithmConfig

__all__ = ["build_estimator", "check_estimator", "estimator_factory"]


def build_estimator(config: AlgorithmConfig) -> AdvantageEstimator:
    """The advantage estimator ``config.estimator`` names, built from ``config``.

    Raises:
        ValueError: See :func:`~turnrl.training.algorithms.estimator_factory`; or
            the factory raised, or returned something that is not an estimator (a
            callable ``(batch, values=None) -> advantages``).
    """
    factory = estimator_factory(config.estimator)
    try:
        estimator = factory(config)
    except Exception as e:
        raise ValueError(
            f"estimator {config.estimator!r}: calling it with the AlgorithmConfig raised "
            f"{type(e).__name__}: {e}"
        ) from e
    if not callable(estimator) or isinstance(estimator, type):
        raise ValueError(
            f"estimator {config.estimator!r} returned {type(estimator).__name__} "
            f"{_short(estimator)}, not an estimator: the factory must return a callable "
            "(batch, values=None) -> advantages of shape (N, T)"
        )
    return estimator


def check_estimator(config: AlgorithmConfig, *, source: str = "config") -> None:
    """Build the estimator once, so a bad ``algorithm.estimator`` fails when a file is loaded.

    Raises:
        ValueError: ``invalid SOURCE`` and the reason (see :func:`build_estimator`).
    """
    if config.estimator in ALGORITHMS:
        return
    try:
        build_estimator(config)
    except ValueError as e:
        raise ValueError(f"invalid {source}:\n  algorithm.estimator: {e}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
