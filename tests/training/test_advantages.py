import pytest
import torch
from torch.testing import assert_close

from turnrl.training.advantages import (
    ESTIMATORS,
    group_mean,
    group_std,
    grpo_advantages,
    per_token,
)
from turnrl.training.config import AlgorithmConfig

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5])
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1])


def test_group_statistics():
    assert_close(group_mean(REWARDS, GROUPS), torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.5]))
    # group 0: squared deviations 4 x 0.25 = 1, Bessel: 1 / 3, std = 0.57735
    std = group_std(REWARDS, GROUPS)
    assert_close(std[:4], torch.full((4,), (1 / 3) ** 0.5))
    assert_close(std[4:], torch.zeros(2))


def test_grpo_group_scaling_hand_worked():
    adv = grpo_advantages(REWARDS, GROUPS, scale="group")
    # group 0: +-0.5 / (0.57735 + 1e-4) = +-0.86588; group 1 ties: 0 / 1e-4 = 0
    a = 0.5 / ((1 / 3) ** 0.5 + 1e-4)
    assert_close(adv, torch.tensor([a, -a, -a, a, 0.0, 0.0]))


def test_grpo_without_scaling_is_dr_grpo():
    adv = grpo_advantages(REWARDS, GROUPS, scale="none")
    assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]))


def test_grpo_batch_scaling():
    adv = grpo_advantages(REWARDS, GROUPS, scale="batch")
    # batch std of [1, 0, 0, 1, .5, .5]: mean .5, squared devs sum 1, / 5 -> sqrt(.2)
    assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]) / (0.2**0.5 + 1e-4))


def test_unknown_scale():
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_advantages(REWARDS, GROUPS, scale="sometimes")


def test_per_token_broadcast_and_estimator_registry():
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert_close(
        per_token(torch.tensor([2.0, -1.0]), mask),
        torch.tensor([[0.0, 2.0, 2.0], [0.0, 0.0, -1.0]]),
    )
    assert set(ESTIMATORS) == {"grpo"}
    assert callable(ESTIMATORS["grpo"](AlgorithmConfig()))
