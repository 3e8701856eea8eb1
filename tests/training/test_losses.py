import math

import torch
from torch.testing import assert_close

from turnrl.training.losses import kl_k3, masked_mean, ppo_clip_loss, token_mean


def test_ppo_clip_hand_worked():
    # Four tokens: ratios 1.5, 1.5, 0.5, 0.5 against advantages +1, -1, +1, -1; eps = 0.2.
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = ppo_clip_loss(logprobs, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped: no extra push beyond 1.2)
    # token 1: max(+1.5, +1.2) = +1.5 (pessimistic bound keeps the unclipped loss)
    # token 2: max(-0.5, -0.8) = -0.5
    # token 3: max(+0.5, +0.8) = +0.8 (clipped at 0.8)
    assert_close(loss, torch.tensor([[-1.2, 1.5, -0.5, 0.8]]))
    assert stats["clip_frac"].item() == 0.5  # tokens 0 and 3


def test_clip_higher_uses_separate_bounds():
    old = torch.zeros(1, 2)
    logprobs = torch.log(torch.tensor([[1.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0]])
    loss, _ = ppo_clip_loss(
        logprobs, old, adv, torch.ones(1, 2), clip_eps_low=0.1, clip_eps_high=0.28
    )
    # token 0: max(-1.5, -1.28) = -1.28; token 1: max(0.5, 0.9) = 0.9
    assert_close(loss, torch.tensor([[-1.28, 0.9]]))


def test_ppo_gradient_at_ratio_one_is_policy_gradient():
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[2.0, -3.0]])
    loss, _ = ppo_clip_loss(logprobs, logprobs.detach(), adv, torch.ones(1, 2))
    loss.sum().backward()
    # d(-A * exp(lp - old))/d lp = -A at ratio 1
    assert_close(logprobs.grad, torch.tensor([[-2.0, 3.0]]))


def test_masked_positions_contribute_nothing():
    logprobs = torch.tensor([[0.0, 5.0]])
    loss, _ = ppo_clip_loss(
        logprobs, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[1.0, 0.0]])
    )
    assert loss[0, 1] == 0


def test_k3_hand_worked():
    # r = log(0.25) - log(0.5) = -log 2; k3 = exp(r) - r - 1 = 0.5 + 0.693147 - 1
    value = kl_k3(torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25])))
    assert_close(value, torch.tensor([0.5 + math.log(2) - 1]))
    assert kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0


def test_token_mean_uses_the_step_token_count():
    per_token = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # (1 + 2) / 6 tokens in the whole step = 0.5
    assert token_mean(per_token, mask, 6).item() == 0.5
    assert masked_mean(per_token, mask).item() == 1.5


def test_seq_mean_token_mean_weighs_sequences_equally():
    from turnrl.training.losses import seq_mean_token_mean

    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # sequence means: (1 + 2) / 2 = 1.5 and 4 / 1 = 4; (1.5 + 4) / 4 sequences in the step
    assert seq_mean_token_mean(per_token, mask, 4).item() == 1.375


def test_k1_k2_hand_worked():
    from turnrl.training.losses import KL_ESTIMATORS, kl_k1, kl_k2

    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    # log pi - log ref = log 2
    assert_close(kl_k1(logp, ref), torch.tensor([math.log(2)]))
    assert_close(kl_k2(logp, ref), torch.tensor([0.5 * math.log(2) ** 2]))
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_seq_mean_token_sum_and_constant_hand_worked():
    from turnrl.training.losses import AGGREGATIONS, constant_normalizer, seq_mean_token_sum

    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # sequence sums: 3 and 4; (3 + 4) / 4 sequences in the step
    assert seq_mean_token_sum(per_token, mask, 4).item() == 1.75
    # Dr. GRPO: (1 + 2 + 4) / (2 sequences x a budget of 7 tokens) = 0.5
    assert constant_normalizer(per_token, mask, 2 * 7).item() == 0.5
    assert set(AGGREGATIONS) == {
        "token_mean",
        "seq_mean_token_mean",
        "seq_mean_token_sum",
        "constant",
    }


def test_value_loss_clipping_hand_worked():
    from turnrl.training.losses import value_loss

    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[0.5, -0.1, 0.5]])
    returns = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    loss, stats = value_loss(new, old, returns, mask, clip=0.2)
    # token 0: unclipped (0.5 - 1)^2 = 0.25, clipped (0.2 - 1)^2 = 0.64 -> 0.5 * 0.64 = 0.32
    # token 1: inside the clip range: 0.5 * (-0.1 - 1)^2 = 0.605
    # token 2: unclipped (0.5 + 1)^2 = 2.25, clipped (0.2 + 1)^2 = 1.44 -> 0.5 * 2.25 = 1.125
    assert_close(loss, torch.tensor([[0.32, 0.605, 1.125]]))
    assert_close(stats["value_clip_frac"], torch.tensor(1 / 3))
    unclipped, _ = value_loss(new, old, returns, mask, clip=None)
    assert_close(unclipped, 0.5 * (new - returns) ** 2)
