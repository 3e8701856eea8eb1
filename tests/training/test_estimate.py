"""The estimate step: KL in the reward, the estimator's shape, whitening as the table says."""

import pytest
import torch
from torch.testing import assert_close

from turnrl.training.advantages import per_token
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import TrainingConfig
from turnrl.training.estimate import estimate


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
