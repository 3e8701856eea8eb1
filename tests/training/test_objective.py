"""A micro-batch's loss: the step normalizers, and the terms the algorithm's loss adds to."""

import pytest

from turnrl.training.config import TrainingConfig
from turnrl.training.objective import constant_tokens, step_normalizer


def _config(**algorithm):
    return TrainingConfig.from_profile(
        "balanced",
        algorithm=algorithm,
        generation={"max_new_tokens": 10},
        rollout={"max_turns": 3},
    )


def test_constant_tokens_defaults_to_the_generation_budget():
    assert constant_tokens(_config()) == 30  # 10 new tokens x 3 turns
    assert constant_tokens(_config(constant_tokens=7)) == 7


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("token_mean", 120.0),  # the step's tokens
        ("seq_mean_token_mean", 8.0),  # its sequences
        ("seq_mean_token_sum", 8.0),
        ("constant", 240.0),  # sequences x the budget: 8 x 30
    ],
)
def test_step_normalizer(aggregation, expected):
    assert step_normalizer(120, 8, _config(loss_aggregation=aggregation)) == expected
