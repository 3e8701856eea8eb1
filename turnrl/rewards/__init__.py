"""Who judges: reward functions, their weighted composition, and group scoring.

A reward function scores a whole ``TrajectoryGroup`` and returns one
``RewardResult`` per trajectory; ``reward_function`` lifts a plain
``(trajectory) -> float``. ``combine`` makes a weighted sum (weight 0 = metric
only), and ``score_groups`` writes the rewards into the trajectories.
"""

from turnrl.rewards.base import (
    RewardFunction,
    RewardResult,
    group_reward_function,
    reward_function,
)
from turnrl.rewards.batching import CallBatcher
from turnrl.rewards.builtin import exact_match, length_penalty, numeric_match, regex_format
from turnrl.rewards.combine import WeightedReward, combine, score_groups
from turnrl.rewards.judge import ModelJudge, RubricJudge, matches, mentions, transcript

__all__ = [
    "CallBatcher",
    "ModelJudge",
    "RewardFunction",
    "RewardResult",
    "RubricJudge",
    "WeightedReward",
    "combine",
    "exact_match",
    "group_reward_function",
    "length_penalty",
    "matches",
    "mentions",
    "numeric_match",
    "regex_format",
    "reward_function",
    "score_groups",
    "transcript",
]
