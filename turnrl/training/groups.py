"""Scoring a step's groups, which of them it learns from, and when a step has failed.

:func:`score_step` rewards the groups and raises when too many episodes failed.
A group is kept when enough of its episodes finished (``rollout.min_group_size``)
and, with ``algorithm.skip_tied_groups``, when its rewards are not all equal
(a group-relative estimator gives such a group zero advantage everywhere).
Too many failed episodes in a step stop the run with the most common errors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from turnrl.rewards import RewardFunction, score_groups
from turnrl.training.config import TrainingConfig
from turnrl.training.errors import RolloutFailureError
from turnrl.training.rollout_metrics import rollout_metrics
from turnrl.types import TrajectoryGroup, flatten


async def score_step(
    groups: Sequence[TrajectoryGroup],
    rewards: RewardFunction | None,
    config: TrainingConfig,
    step: int,
) -> dict[str, Any]:
    """Reward step ``step``'s groups (those given with rewards keep them).

    Returns:
        The ``reward/*`` and ``rollout/*`` metrics.

    Raises:
        RolloutFailureError: More than ``rollout.max_failed_frac`` of the episodes failed.
    """
    unscored = [g for g in groups if any(t.reward is None for t in g.ok)]
    metrics: dict[str, Any] = await score_groups(unscored, rewards)
    metrics |= rollout_metrics(groups)
    check_failures(groups, config.rollout.max_failed_frac, step)
    return metrics


def filter_groups(
    groups: Sequence[TrajectoryGroup], config: TrainingConfig
) -> tuple[list[TrajectoryGroup], dict[str, float]]:
    """The groups to learn from, and ``rollout/*`` metrics saying what was dropped."""
    kept = [g for g in groups if len(g.ok) >= config.rollout.min_group_size]
    metrics = {
        "rollout/groups_dropped": float(len(groups) - len(kept)),
        "rollout/frac_zero_std": frac_tied(kept),
    }
    if config.algorithm.skip_tied_groups:
        kept = [g for g in kept if not tied(g)]
        metrics["rollout/groups_skipped_tied"] = metrics["rollout/frac_zero_std"]
    return kept, metrics


def check_failures(groups: Sequence[TrajectoryGroup], max_frac: float, step: int) -> None:
    """Raise RolloutFailureError, with the most common errors, above ``max_frac`` failures."""
    episodes = flatten(groups)
    failed = [t for t in episodes if t.failed]
    if not episodes or len(failed) / len(episodes) <= max_frac:
        return
    counts = Counter(t.error or "" for t in failed)  # whole: the explanation is at the end
    summary = "; ".join(f"{n} x {error!r}" for error, n in counts.most_common(5))
    raise RolloutFailureError(
        f"step {step}: {len(failed)} of {len(episodes)} episodes failed (more than "
        f"rollout.max_failed_frac={max_frac}). Most common errors: {summary}"
    )


def tied(group: TrajectoryGroup) -> bool:
    """Whether the group's surviving episodes all got the same reward."""
    return len({t.reward for t in group.ok}) <= 1


def frac_tied(groups: Sequence[TrajectoryGroup]) -> float:
    """Fraction of groups whose surviving episodes all got the same reward."""
    if not groups:
        return 0.0
    return sum(tied(g) for g in groups) / len(groups)
