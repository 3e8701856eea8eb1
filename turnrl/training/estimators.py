"""Turning ``algorithm.estimator`` into an advantage estimator, with errors that say why not.

``algorithm.estimator`` is a built-in name (:data:`~turnrl.training.advantages.ESTIMATORS`)
or an import path ``package.module:factory``, a function that takes the
:class:`~turnrl.training.config.AlgorithmConfig` and returns an estimator (a callable
``(batch, values=None) -> advantages``). An import path is only a string until it is
imported and called, so config loading (:func:`check_estimator`) and the Trainer
(:func:`build_estimator`) both build it, to refuse ``builtins:print`` or a factory
returning ``None`` before any rollout.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from turnrl.imports import import_object
from turnrl.training.advantages import ESTIMATORS, AdvantageEstimator
from turnrl.training.config import AlgorithmConfig


def estimator_factory(kind: str) -> Callable[[AlgorithmConfig], AdvantageEstimator]:
    """The estimator factory for ``kind``: a built-in name or ``package.module:factory``.

    Raises:
        ValueError: The name is unknown, the import path does not resolve, or
            it names something that cannot be a factory (not callable, or a
            built-in function such as ``builtins:print``).
    """
    if kind in ESTIMATORS:
        return ESTIMATORS[kind]
    hint = (
        f"give a built-in name ({', '.join(ESTIMATORS)}) or 'package.module:factory', a "
        "function taking the AlgorithmConfig and returning an estimator"
    )
    try:
        factory = import_object(kind)
    except ValueError as e:
        raise ValueError(f"estimator {e}; {hint}") from None
    if not callable(factory) or inspect.isbuiltin(factory):
        what = "a built-in function" if inspect.isbuiltin(factory) else "not callable"
        raise ValueError(f"estimator {kind!r} is {what}, not an estimator factory; {hint}")
    return factory


def build_estimator(config: AlgorithmConfig) -> AdvantageEstimator:
    """The advantage estimator ``config.estimator`` names, built from ``config``.

    Raises:
        ValueError: See :func:`estimator_factory`; or the factory raised, or
            returned something that is not an estimator (a callable
            ``(batch, values=None) -> advantages``).
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
    if config.estimator in ESTIMATORS:
        return
    try:
        build_estimator(config)
    except ValueError as e:
        raise ValueError(f"invalid {source}:\n  algorithm.estimator: {e}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
