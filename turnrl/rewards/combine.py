"""Weighted composition of reward functions, and the scoring of rollout groups.

``combine`` builds a :class:`WeightedReward`, whose score for a trajectory is

    score = sum_i weight_i * score_i

over its components. All components run on every group (concurrently), and
each one's raw, unweighted score is reported in ``RewardResult.components``
under its name, so that a component with weight 0 is a metric only: computed
and logged, adding nothing to the reward. Weights may be negative (penalties);
NaN and infinite weights are rejected.

Failures: a component that fails on a trajectory (or on the whole group)
marks that trajectory's combined result errored, and the trainer drops it.
The exception is a weight-0 component: as it cannot change the reward, its
failure is logged (``reward_metric_failed``) and its metric left out for that
trajectory, but the trajectory is kept for training.

:func:`score_groups` is what the trainer calls: it writes
``Trajectory.reward`` (environment return + reward score),
``Trajectory.reward_components`` and, on failure, ``Trajectory.error``.
:func:`with_timeout` gives a reward function a time limit per group, which
the trainer applies to ``rollout.reward_timeout_s`` in training and evaluation.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from turnrl.rewards.base import (
    RewardFunction,
    RewardResult,
    TrajectoryScore,
    as_reward_function,
    score_group,
)
from turnrl.scores import mean
from turnrl.types import Trajectory, TrajectoryGroup
from turnrl.watchdog import watch_event_loop

log = structlog.get_logger(__name__)

ENV_RETURN = "env_return"
"""Reserved component name: the sum of the environment's per-turn rewards."""

RewardLike = RewardFunction | TrajectoryScore
"""A RewardFunction, or a plain ``(trajectory) -> float`` to lift."""


class WeightedReward:
    """A weighted sum of reward functions (see the module docstring).

    Attributes:
        name: The combined reward's name (its score is logged under it).
        components: ``(reward_function, weight)`` pairs, in the given order.
    """

    def __init__(
        self,
        components: Sequence[tuple[RewardLike, float]] | Mapping[RewardLike, float],
        *,
        name: str = "combined",
    ) -> None:
        """Check and store the components.

        Args:
            components: ``(function, weight)`` pairs or a ``{function: weight}``
                mapping. Plain callables are lifted with ``reward_function``.
            name: The combined reward's name.

        Raises:
            ValueError: No components, two components with the same name, a
                component named ``env_return`` or like the combination, or a
                non-finite weight.
            TypeError: A weight is not a real number.
        """
        pairs = list(components.items()) if isinstance(components, Mapping) else list(components)
        if not pairs:
            raise ValueError("combine needs at least one reward function")
        self.name = name
        self.components: tuple[tuple[RewardFunction, float], ...] = tuple(
            (as_reward_function(fn), _check_weight(fn, weight)) for fn, weight in pairs
        )
        seen: set[str] = set()
        for fn, _ in self.components:
            if fn.name in seen:
                raise ValueError(f"two reward components are named {fn.name!r}; pass name=")
            if fn.name in (ENV_RETURN, name):
                raise ValueError(f"a reward component cannot be named {fn.name!r} (reserved)")
            seen.add(fn.name)

    @property
    def weights(self) -> dict[str, float]:
        """Each component's weight, by name."""
        return {fn.name: weight for fn, weight in self.components}

    def __repr__(self) -> str:
        return f"WeightedReward(name={self.name!r}, weights={self.weights})"

    async def __call__(self, group: TrajectoryGroup) -> list[RewardResult]:
        """Score ``group`` with every component; one combined result per trajectory."""
        per_component: list[list[RewardResult]] = [[] for _ in self.components]

        async def run(i: int, fn: RewardFunction) -> None:
            per_component[i] = await score_group(fn, group)

        async with anyio.create_task_group() as tg:
            for i, (fn, _) in enumerate(self.components):
                tg.start_soon(run, i, fn)
        return [
            self._combine(group, [results[k] for results in per_component])
            for k in range(len(group))
        ]

    def _combine(self, group: TrajectoryGroup, results: list[RewardResult]) -> RewardResult:
        """Weighted sum of one trajectory's component results."""
        score = 0.0
        components: dict[str, float] = {}
        errors: list[str] = []
        for (fn, weight), result in zip(self.components, results, strict=True):
            if result.error is not None:
                if weight == 0.0:
                    log.warning(
                        "reward_metric_failed", scenario_id=group.scenario.id, error=result.error
                    )
                else:
                    errors.append(result.error)
                continue
            score += weight * result.score
            components[fn.name] = result.score
            # Prefixed so that two components' sub-scores cannot collide.
            components.update({f"{fn.name}/{key}": v for key, v in result.components.items()})
        if errors:
            return RewardResult(0.0, components=components, error="; ".join(errors))
        return RewardResult(score, components=components)


def _check_weight(fn: object, weight: object) -> float:
    label = getattr(fn, "name", None) or getattr(fn, "__name__", repr(fn))
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise TypeError(f"weight of {label!r} must be a real number, got {weight!r}")
    if not math.isfinite(weight):
        raise ValueError(f"weight of {label!r} must be finite, got {weight}")
    return float(weight)


def combine(
    *rewards: RewardLike | Mapping[RewardLike, float],
    weights: Sequence[float] | None = None,
    name: str = "combined",
) -> WeightedReward:
    """Combine reward functions into their weighted sum.

    Three spellings::

        combine(correct, fmt)                         # weights 1.0 each
        combine(correct, fmt, weights=[1.0, 0.2])
        combine({correct: 1.0, fmt: 0.2, length: 0.0})   # length: metric only

    Args:
        *rewards: Reward functions (plain ``(trajectory) -> float`` callables
            are lifted with ``reward_function``), or a single mapping from
            reward function to weight.
        weights: One weight per reward function (default: 1.0 each). Not
            allowed with a mapping.
        name: The combined reward's name.

    Returns:
        The :class:`WeightedReward`.

    Raises:
        ValueError: See :class:`WeightedReward`; also a weights/rewards length
            mismatch.
        TypeError: ``weights`` given together with a mapping.

    Examples:
        >>> import anyio
        >>> from turnrl.types import Scenario, Trajectory, TrajectoryGroup
        >>> def one(t): return 1.0
        >>> def two(t): return 2.0
        >>> def ten(t): return 10.0
        >>> reward = combine({one: 0.5, two: -1.0, ten: 0.0})
        >>> group = TrajectoryGroup(scenario=Scenario(id="s"), trajectories=[
        ...     Trajectory(scenario=Scenario(id="s"))])
        >>> anyio.run(reward, group)[0]  # 0.5 * 1 - 1 * 2 + 0 * 10 = -1.5
        RewardResult(score=-1.5, components={'one': 1.0, 'two': 2.0, 'ten': 10.0}, error=None)
    """
    if len(rewards) == 1 and isinstance(rewards[0], Mapping):
        if weights is not None:
            raise TypeError("pass weights either in the mapping or as weights=, not both")
        return WeightedReward(rewards[0], name=name)
    if weights is None:
        weights = [1.0] * len(rewards)
    if len(weights) != len(rewards):
        raise ValueError(f"{len(weights)} weights for {len(rewards)} reward functions")
    return WeightedReward(list(zip(rewards, weights, strict=True)), name=name)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TimedReward:
    """A reward function whose scoring of one group fails after ``seconds``.

    Build it with :func:`with_timeout`. Async work is cancelled at the limit;
    a sync function's thread is abandoned (see :mod:`turnrl.rewards.base`).

    Attributes:
        reward: The wrapped reward function.
        seconds: Time limit per group.
    """

    reward: RewardFunction
    seconds: float

    @property
    def name(self) -> str:
        """The wrapped function's name (metrics and components are unchanged)."""
        return self.reward.name

    async def __call__(self, group: TrajectoryGroup) -> list[RewardResult]:
        """Score ``group``; every trajectory gets a timeout error past the limit."""
        with anyio.move_on_after(self.seconds):
            return await score_group(self.reward, group)
        # Only reached when the deadline cancelled the scoring.
        error = f"{self.name}: timed out after {self.seconds:g} s (rollout.reward_timeout_s)"
        return [RewardResult(0.0, error=error)] * len(group)


def with_timeout(reward: RewardFunction | None, seconds: float | None) -> RewardFunction | None:
    """``reward`` with a time limit per group (``None`` for either: unchanged).

    Raises:
        ValueError: ``seconds`` is not a positive finite number.
    """
    if reward is None or seconds is None:
        return reward
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"seconds must be a positive finite number, got {seconds!r}")
    return TimedReward(reward, float(seconds))


async def score_groups(
    groups: Sequence[TrajectoryGroup],
    reward: RewardFunction | None,
    *,
    timeout_s: float | None = None,
) -> dict[str, float]:
    """Score every not-yet-failed trajectory of ``groups`` in place.

    For each such trajectory ``t`` with result ``r``:

    - ``t.reward = t.env_return + r.score`` (``t.env_return`` alone if
      ``reward`` is None);
    - ``t.reward_components = {"env_return": t.env_return, reward.name: r.score,
      **r.components}``;
    - if ``r.error`` is set: ``t.error = r.error`` and ``t.reward`` stays None
      (the trainer drops the trajectory); the error is logged once.

    Already-failed trajectories are not shown to the reward function. Groups
    are scored concurrently; this never raises for a failing reward.

    Args:
        groups: The rollout groups; their trajectories are updated in place.
        reward: The reward function, or None for environment rewards only.
        timeout_s: A group whose scoring takes longer fails (each of its
            trajectories gets the error); None: no limit.

    Returns:
        ``reward/<name>_mean`` for every name in ``reward_components`` (mean
        over the trajectories scored without error that have it) and
        ``reward/failed``, the number of trajectories whose scoring failed.
    """
    # One slot per group so that the metrics do not depend on completion order.
    outcomes: list[list[tuple[Trajectory, RewardResult]]] = [[] for _ in groups]

    async def score(i: int, group: TrajectoryGroup) -> None:
        ok = group.ok
        if not ok:
            return
        if reward is None:
            results = [RewardResult(0.0)] * len(ok)
        else:
            sub_group = TrajectoryGroup(scenario=group.scenario, trajectories=ok)
            timed = with_timeout(reward, timeout_s) or reward
            results = await score_group(timed, sub_group)
        outcomes[i] = list(zip(ok, results, strict=True))

    with watch_event_loop(label="reward"):
        async with anyio.create_task_group() as tg:
            for i, group in enumerate(groups):
                tg.start_soon(score, i, group)

    values_by_key: dict[str, list[float]] = defaultdict(list)
    failed = 0
    for trajectory, result in (pair for group_outcomes in outcomes for pair in group_outcomes):
        components = _apply(trajectory, result, None if reward is None else reward.name)
        if result.error is not None:
            failed += 1
            log.warning("reward_failed", scenario_id=trajectory.scenario.id, error=result.error)
            continue
        for key, value in components.items():
            values_by_key[key].append(value)
    metrics = {f"reward/{key}_mean": mean(vs) for key, vs in values_by_key.items()}
    metrics["reward/failed"] = float(failed)
    return metrics


def _apply(trajectory: Trajectory, result: RewardResult, name: str | None) -> dict[str, float]:
    """Write ``result`` into ``trajectory``; returns its reward components."""
    env_return = trajectory.env_return
    named = dict(result.components)
    if name is not None and result.error is None:
        named = {name: result.score, **named}
    named.pop(ENV_RETURN, None)  # reserved: the environment's return always wins
    trajectory.reward_components = {ENV_RETURN: env_return, **named}
    if result.error is not None:
        trajectory.error = result.error
    else:
        trajectory.reward = env_return + result.score
    return trajectory.reward_components


RewardsArg = RewardFunction | Sequence[Any] | Mapping[Any, float] | None
"""What ``Trainer(rewards=...)`` takes: see :func:`as_reward`."""


def as_reward(rewards: RewardsArg) -> RewardFunction | None:
    """A RewardFunction from what ``Trainer(rewards=...)`` accepts.

    A RewardFunction or None as it is; a function or a ``{function: weight}``
    mapping, or a list of functions (weight 1 each), through :func:`combine`.
    """
    if rewards is None or isinstance(rewards, RewardFunction):
        return rewards
    if isinstance(rewards, Mapping) or callable(rewards):
        return combine(rewards)
    return combine(*rewards)
