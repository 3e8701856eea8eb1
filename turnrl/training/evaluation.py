"""Evaluation: play held-out scenarios with the current policy, score them, summarize.

No optimizer, no reference, no gradient: what ``Trainer.evaluate`` and any
other evaluation run. With several processes each rank plays its share of the
scenarios (``scenarios[rank::world]``); :func:`eval_metrics` combines the ranks.

Standard errors. Every per-episode mean ``eval/<m>`` comes with
``eval/<m>_stderr``, the standard error of the mean over scenarios: the sample
standard deviation (ddof 1) of the per-scenario means divided by the square root
of the number of scenarios. The episodes of one scenario share its question, so
they are correlated; counting them as independent samples would understate the
error. The stderr therefore covers both the sampling noise within a scenario
and the spread between scenarios, and shrinks with more scenarios rather than
more samples per scenario.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from turnrl.agents.base import TrainableAgent
from turnrl.agents.inference import SamplingParams
from turnrl.environments.base import Environment
from turnrl.rewards import RewardFunction, score_groups
from turnrl.training.config import EvalConfig, TrainingConfig
from turnrl.training.distributed import DistributedContext, gather, mean_metrics
from turnrl.training.rollout import collect
from turnrl.training.rollout_metrics import rollout_metrics
from turnrl.types import Scenario, TrajectoryGroup, flatten

STDERR = "_stderr"
"""Suffix of a metric's standard error (``eval/reward_mean_stderr``)."""


def eval_sampling(config: TrainingConfig) -> tuple[SamplingParams, int]:
    """The sampling settings of an evaluation and the episodes per scenario.

    ``eval.temperature`` 0 means greedy decoding, one episode per scenario.
    """
    gen, ev = config.generation, config.eval
    greedy = ev.temperature == 0
    params = SamplingParams(gen.max_new_tokens, ev.temperature, 1.0 if greedy else gen.top_p)
    return params, 1 if greedy else ev.num_generations


async def play_and_score(
    agent: TrainableAgent,
    env: Environment,
    scenarios: Sequence[Scenario],
    rewards: RewardFunction | None,
    config: TrainingConfig,
    dist: DistributedContext,
    *,
    on_episode: Callable[[int, int], None] | None = None,
) -> list[TrajectoryGroup]:
    """This rank's share of ``scenarios`` played and rewarded (``eval`` settings).

    Raises:
        ValueError: No scenarios.
    """
    if not scenarios:
        raise ValueError("no evaluation scenarios")
    params, per_scenario = eval_sampling(config)
    try:
        groups = await collect(
            agent,
            env,
            list(scenarios)[dist.rank :: dist.world_size],
            per_scenario,
            max_concurrency=config.rollout.max_concurrency,
            seed=10**9 + config.run.seed,
            sampling=params,
            on_episode=on_episode,
        )
    finally:  # the episodes are over: their KV caches would only hold memory
        agent.engine.release_cache()
    await score_groups(groups, rewards)
    return groups


def eval_metrics(groups: Sequence[TrajectoryGroup], dist: DistributedContext) -> dict[str, float]:
    """The ``eval/*`` metrics of every rank's ``groups``, with standard errors.

    Means are over all episodes (as in training); each per-episode mean also
    gets ``<key>_stderr`` over the per-scenario means (see the module docstring)
    when at least two scenarios have it.
    """
    metrics = rollout_metrics(groups, prefix="eval")
    metrics = mean_metrics(metrics, dist, weight=float(len(flatten(groups))))
    per_scenario = [rollout_metrics([group], prefix="eval") for group in groups]
    rows = [row for rank_rows in gather(per_scenario, dist) for row in rank_rows]
    for key in [k for k in metrics if _per_episode_mean(k)]:
        values = [row[key] for row in rows if key in row]
        if len(values) >= 2:
            metrics[key + STDERR] = standard_error(values)
    return metrics


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean of ``values``: sample std (ddof 1) / sqrt(n).

    >>> standard_error([1.0, 0.0])  # mean 0.5; (0.25 + 0.25) / 1 / 2 = 0.25; sqrt
    0.5

    Raises:
        ValueError: Fewer than two values.
    """
    n = len(values)
    if n < 2:
        raise ValueError(f"a standard error needs at least two values, got {n}")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _per_episode_mean(key: str) -> bool:
    """Whether ``key`` is a mean over episodes (not a count, spread or extreme)."""
    name = key.removeprefix("eval/")
    return (
        name.endswith(("_mean", "_frac"))
        or name.startswith("reward/")
        or name
        in (
            "tool_calls",
            "tool_errors",
        )
    )


def metric_key(config: EvalConfig) -> str:
    """The full key of ``eval.metric`` (``reward_mean`` -> ``eval/reward_mean``)."""
    return config.metric if config.metric.startswith("eval/") else f"eval/{config.metric}"


class EvalReport:
    """``eval.metric`` at a run's evaluation before training and its latest one.

    Args:
        config: The ``eval`` section (``metric``).
    """

    def __init__(self, config: EvalConfig) -> None:
        self.key = metric_key(config)
        self.before: tuple[float | None, float | None] = (None, None)
        self.after: tuple[float | None, float | None] = (None, None)
        self.last_step: int | None = None

    def record(self, step: int, metrics: Mapping[str, Any], *, before: bool) -> None:
        """Keep the metric of an evaluation at ``step`` (``before``: ahead of any update).

        Raises:
            ValueError: The evaluation had episodes that did not fail but no
                ``eval.metric`` among its metrics: a name that does not exist.
        """
        scored = metrics.get("eval/episodes", 0) > metrics.get("eval/failed", 0)
        if scored and self.key not in metrics:
            known = sorted(k.removeprefix("eval/") for k in metrics if not k.endswith(STDERR))
            raise ValueError(
                f"eval.metric {self.key.removeprefix('eval/')!r} is not an eval metric of this "
                f"run; set eval.metric to one of: {', '.join(known)}"
            )
        value = (metrics.get(self.key), metrics.get(self.key + STDERR))
        if before:
            self.before = value
        else:
            self.after = value
        self.last_step = step

    def summary(self) -> dict[str, Any]:
        """``eval_metric`` and ``eval_before``/``eval_after`` with their ``_stderr``."""
        return {
            "eval_metric": self.key,
            "eval_before": self.before[0],
            "eval_before_stderr": self.before[1],
            "eval_after": self.after[0],
            "eval_after_stderr": self.after[1],
        }
