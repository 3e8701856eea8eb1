"""Summary numbers of a rollout: rewards, turns, tokens, limits, tools, views.

``rollout_metrics(groups)`` is what a step logs as ``rollout/...`` and an
evaluation as ``eval/...``. Means are over non-failed trajectories (failed ones
are only counted), aggregated in float64 and never raise (:mod:`turnrl.scores`).
"""

from __future__ import annotations

from collections.abc import Sequence

from turnrl.scores import mean, std
from turnrl.types import Trajectory, TrajectoryGroup, flatten

__all__ = ["rollout_metrics"]


def rollout_metrics(groups: Sequence[TrajectoryGroup], prefix: str = "rollout") -> dict[str, float]:
    """Summary numbers of a set of groups (rewards over the non-failed trajectories)."""
    everything = flatten(groups)
    ok = [t for t in everything if not t.failed]
    rewards = [t.reward if t.reward is not None else t.env_return for t in ok]
    metrics: dict[str, float] = {
        f"{prefix}/episodes": float(len(everything)),
        f"{prefix}/failed": float(len(everything) - len(ok)),
    }
    if ok:
        turns = [t.turns for t in ok]
        metrics |= {
            f"{prefix}/reward_mean": mean(rewards),
            f"{prefix}/reward_std": std(rewards),
            f"{prefix}/reward_max": max(rewards),
            f"{prefix}/reward_min": min(rewards),
            f"{prefix}/turns_mean": mean(len(ts) for ts in turns),
            f"{prefix}/completion_tokens_mean": mean(
                sum(len(turn.completion_ids) for turn in ts) for ts in turns
            ),
            f"{prefix}/truncated_frac": mean(float(t.truncated) for t in ok),
            f"{prefix}/context_overflow": float(
                sum(t.info.get("truncated_by") == "context_length" for t in ok)
            ),
            f"{prefix}/finish_length_frac": mean(
                float(any(turn.finish_reason == "length" for turn in t.turns)) for t in ok
            ),
            f"{prefix}/empty_turns": float(
                sum(not turn.message.content.strip() for ts in turns for turn in ts)
            ),
        }
        metrics |= _tool_metrics(ok, prefix)
        if any(turn.view is not None for ts in turns for turn in ts):
            metrics[f"{prefix}/view_frac"] = mean(
                float(turn.view is not None) for ts in turns for turn in ts
            )
        components: dict[str, list[float]] = {}
        for t in ok:
            for name, value in t.reward_components.items():
                components.setdefault(name, []).append(value)
        for name, values in components.items():
            metrics[f"{prefix}/reward/{name}"] = mean(values)
    return metrics


def _tool_metrics(ok: Sequence[Trajectory], prefix: str) -> dict[str, float]:
    """Tool-call counts per episode, for environments that report them."""
    if not any("tool_calls" in t.info for t in ok):
        return {}
    calls = [float(t.info.get("tool_calls", 0)) for t in ok]
    return {
        f"{prefix}/tool_calls": mean(calls),
        f"{prefix}/tool_errors": mean(float(t.info.get("tool_errors", 0)) for t in ok),
        f"{prefix}/tool_use_frac": mean(float(c > 0) for c in calls),
    }
