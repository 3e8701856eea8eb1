import pytest
import torch
from torch.testing import assert_close

from turnrl.training.advantages import (
    gae_advantages,
    group_mean,
    group_std,
    grpo_advantages,
    make_gae,
    make_grpo,
    make_rloo,
    per_token,
    rloo_advantages,
    whiten,
)
from turnrl.training.batch import RolloutBatch
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


def test_batch_scaling_uses_the_all_rank_std_when_given():
    """Under DDP the trainer passes the std of every rank's rewards; it must be the divisor."""
    rewards, groups = torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]), torch.tensor([0, 0, 0, 0])
    # centered: 1 - 0 = 1, -1/3 - 0 = -1/3; over the all-rank std 10: 1 / 10.0001 = 0.099999,
    # -1/3 / 10.0001 = -0.033333 (this rank's own std, 0.667, would give +-1.5 and -0.5)
    expected = torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]) / (10 + 1e-4)
    for advantages in (grpo_advantages, rloo_advantages):
        scaled = advantages(rewards, groups, scale="batch", batch_std=10.0)
        unscaled = advantages(rewards, groups, scale="none")
        assert_close(scaled, unscaled / (10 + 1e-4))
    assert_close(grpo_advantages(rewards, groups, scale="batch", batch_std=10.0), expected)
    # REWARDS: group 0 centered +-0.5, group 1 ties -> +-0.5 / 10.0001 = +-0.049999
    adv = grpo_advantages(REWARDS, GROUPS, scale="batch", batch_std=10.0)
    assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]) / (10 + 1e-4))


def test_unknown_scale():
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_advantages(REWARDS, GROUPS, scale="sometimes")


def test_per_token_broadcast_and_estimator_registry():
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert_close(
        per_token(torch.tensor([2.0, -1.0]), mask),
        torch.tensor([[0.0, 2.0, 2.0], [0.0, 0.0, -1.0]]),
    )
    factories = (make_grpo, make_rloo, make_gae)
    assert all(callable(factory(AlgorithmConfig())) for factory in factories)


def test_rloo_leave_one_out_hand_worked():
    adv = rloo_advantages(REWARDS, GROUPS)
    # group 0 (1, 0, 0, 1): baseline of element 0 = mean(0, 0, 1) = 1/3 -> 1 - 1/3 = 2/3;
    # element 1: mean(1, 0, 1) = 2/3 -> 0 - 2/3 = -2/3.  Group 1 ties: 0.
    assert_close(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0]))
    # = k/(k-1) x GRPO without scaling: 4/3 x 0.5 = 2/3
    assert_close(
        adv, grpo_advantages(REWARDS, GROUPS, scale="none") * torch.tensor([4 / 3] * 4 + [2.0] * 2)
    )


def test_rloo_scaled_by_group_std_and_needs_pairs():
    adv = rloo_advantages(REWARDS, GROUPS, scale="group")
    a = (2 / 3) / ((1 / 3) ** 0.5 + 1e-4)
    assert_close(adv, torch.tensor([a, -a, -a, a, 0.0, 0.0]))
    with pytest.raises(ValueError, match="at least two"):
        rloo_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))


def test_whiten_hand_worked():
    adv = torch.tensor([[0.0, 1.0, 3.0], [5.0, 0.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # masked values 1, 3, 5: mean 3, population variance (4 + 0 + 4) / 3 = 8/3
    s = (8 / 3) ** 0.5
    assert_close(whiten(adv, mask), torch.tensor([[0.0, -2 / s, 0.0], [2 / s, 0.0, 0.0]]))


def test_gae_hand_worked_with_env_tokens_between_turns():
    # One sequence: prompt token 0, sampled 1-2 (turn 1), env tokens 3-4, sampled 5 (turn 2).
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0]])
    rewards = torch.tensor([[0.0, 0.0, 0.5, 0.0, 0.0, 1.0]])  # turn rewards on turn ends
    # values[t] = value of the prefix through token t; the state token t is chosen in is t - 1.
    values = torch.tensor([[0.2, 0.4, 0.1, 0.0, 0.3, 0.9]])
    gamma, lam = 0.9, 0.5
    # steps (positions 1, 2, 5): V(s) = values[0], values[1], values[4] = 0.2, 0.4, 0.3
    # terminated: next V after the last step is 0.
    # delta_5 = 1.0 + 0 - 0.3 = 0.7
    # delta_2 = 0.5 + 0.9 * 0.3 - 0.4 = 0.37
    # delta_1 = 0.0 + 0.9 * 0.4 - 0.2 = 0.16
    # A_5 = 0.7; A_2 = 0.37 + 0.45 * 0.7 = 0.685; A_1 = 0.16 + 0.45 * 0.685 = 0.46825
    next_value = torch.tensor([0.6])  # V(conversation including the last observation)
    adv, returns = gae_advantages(
        rewards, values, mask, torch.tensor([False]), next_value, gamma=gamma, lam=lam
    )
    assert_close(adv, torch.tensor([[0.0, 0.46825, 0.685, 0.0, 0.0, 0.7]]))
    assert_close(returns, torch.tensor([[0.0, 0.66825, 1.085, 0.0, 0.0, 1.0]]))
    # truncated: bootstrap from the next state's value 0.6, not from values[5] = 0.9:
    # delta_5 = 1.0 + 0.9 * 0.6 - 0.3 = 1.24, etc.
    adv_t, _ = gae_advantages(
        rewards, values, mask, torch.tensor([True]), next_value, gamma=gamma, lam=lam
    )
    a5 = 1.24
    a2 = 0.37 + 0.45 * a5
    a1 = 0.16 + 0.45 * a2
    assert_close(adv_t, torch.tensor([[0.0, a1, a2, 0.0, 0.0, a5]]))


def _gae_loop(rewards, values, mask, truncated, next_values, gamma, lam):
    """The plain reference: walk each row's sampled tokens backwards, one at a time."""
    n, width = mask.shape
    adv = torch.zeros(n, width)
    for i in range(n):
        steps = [t for t in range(width) if mask[i, t] > 0]
        running = 0.0
        for k in reversed(range(len(steps))):
            t = steps[k]
            v = values[i, t - 1].item() if t > 0 else 0.0
            if k + 1 < len(steps):
                next_v = values[i, steps[k + 1] - 1].item()
            else:
                next_v = next_values[i].item() if truncated[i] else 0.0
            delta = rewards[i, t].item() + gamma * next_v - v
            running = delta + gamma * lam * running
            adv[i, t] = running
    return adv


def test_gae_vectorized_equals_loop_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        n, width = 6, 17
        mask = (torch.rand(n, width, generator=gen) < 0.5).float()
        mask[:, 0] = 0.0
        mask[trial % n] = 0.0  # a row with no sampled token at all
        rewards = torch.randn(n, width, generator=gen) * mask
        values = torch.randn(n, width, generator=gen)
        truncated = torch.rand(n, generator=gen) < 0.5  # mixed terminated / truncated rows
        next_values = torch.randn(n, generator=gen)
        gamma, lam = (0.9 + 0.1 * torch.rand(2, generator=gen)).tolist()
        adv, _ = gae_advantages(rewards, values, mask, truncated, next_values, gamma=gamma, lam=lam)
        expected = _gae_loop(rewards, values, mask, truncated, next_values, gamma, lam)
        assert_close(adv, expected, atol=1e-5, rtol=1e-5)


def _batch(rewards, groups, mask, token_rewards=None, truncated=None):
    n, width = mask.shape
    return RolloutBatch(
        input_ids=torch.zeros(n, width, dtype=torch.long),
        attention_mask=torch.ones(n, width, dtype=torch.long),
        loss_mask=mask,
        behavior_logprobs=torch.zeros(n, width),
        has_behavior_logprobs=True,
        token_rewards=token_rewards if token_rewards is not None else torch.zeros(n, width),
        rewards=rewards,
        group_ids=groups,
        terminated=~truncated if truncated is not None else torch.ones(n, dtype=torch.bool),
        truncated=truncated if truncated is not None else torch.zeros(n, dtype=torch.bool),
    )


def test_estimators_from_config():
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    batch = _batch(torch.tensor([1.0, 0.0, 0.5, 0.5]), torch.tensor([0, 0, 1, 1]), mask)
    cfg = AlgorithmConfig
    # grpo defaults to the group std: (+-0.5) / (0.7071 + 1e-4)
    a = 0.5 / (0.5**0.5 + 1e-4)
    assert_close(make_grpo(cfg())(batch), torch.tensor([a, -a, 0.0, 0.0])[:, None] * mask)
    # rloo defaults to no scaling: 1 - 0 = 1, 0 - 1 = -1
    assert_close(make_rloo(cfg())(batch), torch.tensor([1.0, -1.0, 0, 0])[:, None] * mask)
    # gae with zero values, gamma 1, lambda 1: every step's advantage is the reward-to-go
    token_rewards = torch.zeros(4, 3)
    token_rewards[0, 2], token_rewards[1, 1], token_rewards[2, 2], token_rewards[3, 2] = (
        1,
        0,
        0.5,
        0.5,
    )
    gae_batch = _batch(batch.rewards, batch.group_ids, mask, token_rewards)
    gae = make_gae(cfg(estimator="gae", gamma=1.0, gae_lambda=1.0))
    assert_close(gae(gae_batch, torch.zeros(4, 3)), token_rewards.flip(1).cumsum(1).flip(1) * mask)
    with pytest.raises(ValueError, match="needs values"):
        gae(gae_batch)


def test_gae_estimator_bootstraps_truncated_episodes_from_their_next_state():
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    token_rewards = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    truncated = torch.tensor([True, False, True])
    batch = _batch(torch.ones(3), torch.tensor([0, 0, 0]), mask, token_rewards, truncated)
    batch.terminated = torch.tensor([False, True, True])  # row 2: both -> terminal, no bootstrap
    values = torch.full((3, 3), 0.9)  # values[last] = 0.9 must not be the bootstrap
    gae = make_gae(AlgorithmConfig(estimator="gae", gamma=1.0, gae_lambda=1.0))
    with pytest.raises(ValueError, match=r"next state.*encode=agent.encode"):
        gae(batch, values)
    batch.next_values = torch.tensor([0.25, 7.0, 7.0])
    # gamma = lambda = 1: A_t = sum of rewards to go + bootstrap - V(s_t), V(s_t) = 0.9
    # row 0 (truncated): 1 + 0.25 - 0.9 = 0.35 at both steps; rows 1, 2: 1 - 0.9 = 0.1
    expected = torch.tensor([[0.0, 0.35, 0.35], [0.0, 0.1, 0.1], [0.0, 0.1, 0.1]])
    assert_close(gae(batch, values), expected)
