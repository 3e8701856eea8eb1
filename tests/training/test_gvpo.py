"""GVPO's numerics by hand, its estimator, and its settings."""

import pytest
import torch
from torch.testing import assert_close

from turnrl.training.batch import RolloutBatch
from turnrl.training.config import AlgorithmConfig, TrainingConfig
from turnrl.training.gvpo import gvpo_loss, gvpo_weights, make_gvpo


def test_gvpo_loss_hand_worked():
    # One group of 3 one-token responses; log pi - log pi' = 0.2, 0, -0.2; beta 0.5.
    logprobs = torch.tensor([[0.0, -0.8], [0.0, -1.0], [0.0, -1.2]])
    anchor = torch.tensor([[0.0, -1.0], [0.0, -1.0], [0.0, -1.0]])
    mask = torch.tensor([[0.0, 1.0]] * 3)
    rewards = torch.tensor([1.0, 0.0, 0.5])
    groups = torch.tensor([0, 0, 0])
    loss, stats = gvpo_loss(logprobs, anchor, mask, rewards, groups, 0.5)
    # R_theta = 0.5 x (0.2, 0, -0.2) = (0.1, 0, -0.1), mean 0 -> centered (0.1, 0, -0.1)
    # rewards centered: (0.5, -0.5, 0)
    # residuals: (-0.4, 0.5, -0.1); squares 0.16 + 0.25 + 0.01 = 0.42
    # loss = 1/(k-1) x 0.5 x 0.42 = 0.105
    assert_close(loss, torch.tensor(0.105))
    assert_close(stats["gvpo/weight_abs_mean"], torch.tensor(1.0 / 3))
    # Two copies of the group: the mean over groups is unchanged; num_groups overrides.
    two, _ = gvpo_loss(
        logprobs.repeat(2, 1),
        anchor.repeat(2, 1),
        mask.repeat(2, 1),
        rewards.repeat(2),
        torch.tensor([0, 0, 0, 5, 5, 5]),
        0.5,
    )
    assert_close(two, torch.tensor(0.105))
    half, _ = gvpo_loss(logprobs, anchor, mask, rewards, groups, 0.5, normalizer=2)
    assert_close(half, torch.tensor(0.0525))
    # The recipe's sum over the groups of a (single) micro-batch: 0.105 + 0.105 = 0.21.
    summed, _ = gvpo_loss(
        logprobs.repeat(2, 1),
        anchor.repeat(2, 1),
        mask.repeat(2, 1),
        rewards.repeat(2),
        torch.tensor([0, 0, 0, 5, 5, 5]),
        0.5,
        normalizer=1,
    )
    assert_close(summed, torch.tensor(0.21))
    with pytest.raises(ValueError, match="at least two"):
        gvpo_loss(logprobs[:1], anchor[:1], mask[:1], rewards[:1], groups[:1], 0.5)


def test_gvpo_weights_sum_to_zero_per_group():
    gen = torch.Generator().manual_seed(0)
    logprobs, anchor = torch.randn(12, 7, generator=gen), torch.randn(12, 7, generator=gen)
    mask = (torch.rand(12, 7, generator=gen) < 0.6).float()
    rewards = torch.rand(12, generator=gen)
    groups = torch.tensor([3, 3, 3, 0, 0, 0, 0, 7, 7, 7, 7, 7])
    w = gvpo_weights(logprobs, anchor, mask, rewards, groups, 0.7)
    for g in (0, 3, 7):
        assert abs(w[groups == g].sum().item()) < 1e-5


def test_gvpo_weights_hand_worked():
    # Same group as above: w = (R - mean R) - beta (Delta - mean Delta)
    # = (0.5, -0.5, 0) - 0.5 x (0.2, 0, -0.2) = (0.4, -0.5, 0.1)
    logprobs = torch.tensor([[0.0, -0.8], [0.0, -1.0], [0.0, -1.2]])
    anchor = torch.full((3, 2), -1.0)
    mask = torch.tensor([[0.0, 1.0]] * 3)
    w = gvpo_weights(
        logprobs, anchor, mask, torch.tensor([1.0, 0.0, 0.5]), torch.zeros(3, dtype=torch.long), 0.5
    )
    assert_close(w, torch.tensor([0.4, -0.5, 0.1]))


def test_gvpo_estimator_logs_centered_rewards():
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    batch = RolloutBatch(
        input_ids=torch.zeros(4, 3, dtype=torch.long),
        attention_mask=torch.ones(4, 3, dtype=torch.long),
        loss_mask=mask,
        behavior_logprobs=torch.zeros(4, 3),
        has_behavior_logprobs=True,
        token_rewards=torch.zeros(4, 3),
        rewards=torch.tensor([1.0, 0.0, 0.5, 0.5]),
        group_ids=torch.tensor([0, 0, 1, 1]),
        terminated=torch.ones(4, dtype=torch.bool),
        truncated=torch.zeros(4, dtype=torch.bool),
    )
    # group 0: 1 - 0.5, 0 - 0.5; group 1 ties: 0
    expected = torch.tensor([0.5, -0.5, 0.0, 0.0])[:, None] * mask
    assert_close(make_gvpo(AlgorithmConfig(estimator="gvpo"))(batch), expected)


def test_gvpo_settings_are_checked():
    with pytest.raises(ValueError, match="kl_penalty='reward' does not apply"):
        AlgorithmConfig(estimator="gvpo", kl_penalty="reward")
    with pytest.raises(ValueError, match="gvpo' needs beta > 0"):
        AlgorithmConfig(estimator="gvpo", beta=0.0)
    assert not AlgorithmConfig(estimator="gvpo").uses_reference  # pi_theta' = the sampler
    assert AlgorithmConfig(estimator="gvpo", gvpo_reference="reference").uses_reference
    with pytest.raises(ValueError, match="needs num_generations >= 2"):
        TrainingConfig(algorithm={"estimator": "gvpo"}, rollout={"num_generations": 1})
