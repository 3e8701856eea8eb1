"""Evaluation: play held-out scenarios with the current policy and score them.

No optimizer, no reference, no gradient: what ``Trainer.evaluate`` and any
other evaluation run. With several processes each rank plays its share of the
scenarios (``scenarios[rank::world]``); the caller averages the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from turnrl.agents.base import TrainableAgent
from turnrl.agents.inference import SamplingParams
from turnrl.environments.base import Environment
from turnrl.rewards import RewardFunction, score_groups
from turnrl.training.config import TrainingConfig
from turnrl.training.distributed import DistributedContext
from turnrl.training.rollout import collect
from turnrl.types import Scenario, TrajectoryGroup


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
