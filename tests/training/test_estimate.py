"""The estimate step: KL in the reward, the estimator's shape, whitening as the table says."""

import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from turnrl.training.advantages import per_token
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import TrainingConfig
from turnrl.training.estimate import estimate
from turnrl.training.value import critic_stats


def _batch():
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    return RolloutBatch(
        input_ids=torch.zeros(4, 3, dtype=torch.long),
        attention_mask=torch.ones(4, 3, dtype=torch.long),
        loss_mask=mask,
        behavior_logprobs=torch.zeros(4, 3),
        has_behavior_logprobs=True,
        token_rewards=torch.zeros(4, 3),
        rewards=torch.tensor([1.0, 0.0, 2.0, 3.0]),
        group_ids=torch.tensor([0, 0, 1, 1]),
        terminated=torch.ones(4, dtype=torch.bool),
        truncated=torch.zeros(4, dtype=torch.bool),
        old_logprobs=torch.zeros(4, 3),
        ref_logprobs=-mask,  # log pi - log ref = 1 on every sampled token
    )


def raw_rewards(batch, values=None):
    return per_token(batch.rewards, batch.loss_mask)


def _config(**algorithm):
    return TrainingConfig.from_profile("balanced", algorithm={"beta": 0.0, **algorithm})


def test_kl_in_the_reward_hand_worked():
    cfg = _config(kl_penalty="reward", kl_estimator="k1", beta=0.5)
    out, metrics = estimate(_batch(), raw_rewards, cfg)
    # k1 = 1 per sampled token, x beta 0.5; rows have 2, 1, 2, 1 sampled tokens
    assert_close(out.rewards, torch.tensor([1.0 - 1.0, 0.0 - 0.5, 2.0 - 1.0, 3.0 - 0.5]))
    assert_close(out.token_rewards, -0.5 * _batch().loss_mask)
    assert metrics["train/kl_penalty"] == pytest.approx(0.75)  # (1 + 0.5 + 1 + 0.5) / 4


def test_whitening_follows_the_table_unless_configured():
    batch = _batch()
    plain, _ = estimate(batch, raw_rewards, _config())  # grpo: not whitened by default
    assert_close(plain.advantages, raw_rewards(batch))
    whitened, _ = estimate(batch, raw_rewards, _config(estimator="gae"))  # gae: whitened
    mask = batch.loss_mask
    assert_close((whitened.advantages * mask).sum() / mask.sum(), torch.tensor(0.0))
    off, _ = estimate(batch, raw_rewards, _config(estimator="gae", whiten_advantages=False))
    assert_close(off.advantages, raw_rewards(batch))


def test_an_estimator_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"returned shape \(4,\), expected \(4, 3\)"):
        estimate(_batch(), lambda batch, values=None: batch.rewards, _config())


def test_critic_stats_hand_worked():
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    returns = torch.tensor([[2.0, 2.0, 4.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token does not count
    stats = critic_stats(values, returns, mask)
    # returns 2, 2, 4: mean 8/3, variance (4/9 + 4/9 + 16/9) / 3 = 8/9;
    # returns - values = 1, 0, 1: mean 2/3, variance (1/9 + 4/9 + 1/9) / 3 = 2/9;
    # explained variance 1 - (2/9) / (8/9) = 0.75.
    assert stats["explained_variance"] == pytest.approx(0.75)
    assert stats["value_mean"] == pytest.approx(2.0)
    assert stats["return_mean"] == pytest.approx(8 / 3)
    flat = critic_stats(values, torch.full_like(values, 5.0), mask)
    assert math.isnan(flat["explained_variance"])  # returns that do not vary explain nothing


def test_estimate_reports_the_critic_fit_when_there_are_values():
    batch = dataclasses.replace(_batch(), values=torch.zeros(4, 3))
    _, metrics = estimate(batch, raw_rewards, _config(estimator="gae"))
    # Zero values: the returns are the advantages themselves, and a critic that
    # predicts 0 everywhere explains none of their variance.
    assert metrics["train/explained_variance"] == pytest.approx(0.0)
    assert metrics["train/value_mean"] == 0.0
    _, metrics = estimate(_batch(), raw_rewards, _config())
    assert "train/explained_variance" not in metrics  # no critic, no values
