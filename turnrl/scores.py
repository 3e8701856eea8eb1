"""Reward values: the range turnrl accepts, the check, and aggregates that never raise.

Every reward that enters training passes :func:`check_reward`: each
environment step's reward and each reward function's score must be a real
number (``int``, ``float``, ``bool``, numpy scalar) with
``|value| <= MAX_ABS_REWARD``. NaN, infinities, ``None``, strings and tensors
are rejected, and so are huge finite values such as ``-1e308``: they are
finite, but a sum of two of them overflows to ``inf``, a variance squares
them, and estimators, value losses and metrics all do both. The bound keeps a
whole batch summable in float32 with room to spare; real tasks reward in
``[-1, 1]`` or a few hundred at most, so an absurd magnitude is a bug to report
(scale such rewards down instead).

:func:`mean` and :func:`std` aggregate in float64 numpy and never raise, so a
value that slipped past the check (a hand-built trajectory, a custom metric)
shows up as ``inf``/``nan`` in the metrics instead of stopping the run inside
``statistics``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

MAX_ABS_REWARD = 1e6
"""Largest accepted magnitude of one step reward or one reward function's score."""


def check_reward(value: Any) -> float:
    """``value`` as a float, or a ``ValueError`` saying what is wrong with it.

    Args:
        value: A reward as returned by user code.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: ``value`` is not a real number, not finite, or larger in
            magnitude than :data:`MAX_ABS_REWARD`. The message starts with
            ``returned``, to follow the name of whoever returned it.

    Examples:
        >>> check_reward(1), check_reward(True), check_reward(-0.5)
        (1.0, 1.0, -0.5)
        >>> check_reward("0.5")
        Traceback (most recent call last):
        ...
        ValueError: returned str '0.5', expected a finite number
        >>> check_reward(-1e308)
        Traceback (most recent call last):
        ...
        ValueError: returned -1e+308, expected a finite number with |value| <= 1e+06 (scale it down)
    """
    # bool is an int subclass, so it passes as 0/1 without a special case.
    if not isinstance(value, numbers.Real):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        if value is not None:
            shown = f"{type(value).__name__} {shown}"
        raise ValueError(f"returned {shown}, expected a finite number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"returned {number}, expected a finite number")
    if abs(number) > MAX_ABS_REWARD:
        raise ValueError(
            f"returned {number:g}, expected a finite number with |value| <= "
            f"{MAX_ABS_REWARD:g} (scale it down)"
        )
    return number


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean in float64; never raises (``nan`` for no values).

    Examples:
        >>> mean([1e308, 1e308])  # statistics.fmean raises OverflowError here
        inf
    """
    array = np.fromiter(values, dtype=np.float64)
    if array.size == 0:
        return math.nan
    with np.errstate(all="ignore"):
        return float(array.mean())


def std(values: Iterable[float]) -> float:
    """Population standard deviation in float64; never raises (``nan`` for no values)."""
    array = np.fromiter(values, dtype=np.float64)
    if array.size == 0:
        return math.nan
    with np.errstate(all="ignore"):
        return float(array.std())
