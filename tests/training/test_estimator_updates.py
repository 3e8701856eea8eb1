"""Estimators through the real update path, on a small random Llama and synthetic batches.

Covers GVPO's gradient identity and, for every estimator and aggregation, that
the parameter update does not depend on how a step is split into micro-batches.
"""

import dataclasses

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from turnrl.training.advantages import ESTIMATORS
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import TrainingConfig
from turnrl.training.logprobs import token_logprobs
from turnrl.training.losses import gvpo_loss, gvpo_weights
from turnrl.training.update import Optimization, estimate, policy_update, score_batch
from turnrl.training.value import ValueModel

VOCAB = 24


def small_model(seed=0):
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def synthetic_batch(model, *, groups=2, size=4, width=10, seed=0):
    """``groups x size`` sequences of random tokens: a prompt, then 2-6 sampled tokens,
    a tool/user span and, in some rows, a second sampled span (multi-turn)."""
    gen = torch.Generator().manual_seed(seed)
    n = groups * size
    ids = torch.randint(1, VOCAB, (n, width), generator=gen)
    attention = torch.ones(n, width, dtype=torch.long)
    mask = torch.zeros(n, width)
    for i in range(n):
        length = width - int(torch.randint(0, 3, (1,), generator=gen))
        attention[i, length:] = 0
        ids[i, length:] = 0
        mask[i, 2 : 2 + int(torch.randint(2, 5, (1,), generator=gen))] = 1
        if i % 2:
            mask[i, length - 2 : length] = 1
    rewards = torch.rand(n, generator=gen).round(decimals=1)
    token_rewards = torch.zeros(n, width)
    for i in range(n):
        last = int(mask[i].nonzero().max())
        token_rewards[i, last] = rewards[i]
    with torch.no_grad():
        behavior = token_logprobs(model, ids, attention) * mask
    truncated = torch.arange(n) % 3 == 0
    return RolloutBatch(
        input_ids=ids,
        attention_mask=attention,
        loss_mask=mask,
        behavior_logprobs=behavior,
        has_behavior_logprobs=True,
        token_rewards=token_rewards,
        rewards=rewards,
        group_ids=torch.arange(n) // size,
        terminated=~truncated,
        truncated=truncated,
    )


def sgd(params):
    optimizer = torch.optim.SGD(params, lr=1.0)
    return Optimization(
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        torch.amp.GradScaler("cuda", enabled=False),
    )


def config(**algorithm):
    return TrainingConfig.from_profile(
        "balanced",
        algorithm=algorithm,
        optim={"max_grad_norm": None, "micro_batch_size": 8},
        generation={"max_new_tokens": 6},
        rollout={"num_generations": 4},
    )


def one_update(cfg, micro_batch_size, batch):
    """Parameter (and value head) changes of one SGD step (lr 1) from the same start."""
    cfg = cfg.model_copy(
        update={"optim": cfg.optim.model_copy(update={"micro_batch_size": micro_batch_size})}
    )
    policy = small_model()
    ref = small_model().requires_grad_(False) if cfg.algorithm.uses_reference else None
    value = None
    if cfg.algorithm.estimator == "gae":
        value = ValueModel(policy, separate=cfg.algorithm.critic == "separate")
        torch.nn.init.normal_(
            value.head.weight, std=0.5, generator=torch.Generator().manual_seed(1)
        )
    params = list(policy.parameters()) + (list(value.parameters()) if value else [])
    before = [p.detach().clone() for p in params]
    scored = score_batch(policy, ref, value, batch, cfg)
    estimated, _ = estimate(scored, ESTIMATORS[cfg.algorithm.estimator](cfg.algorithm), cfg)
    metrics = policy_update(policy, estimated, sgd(params), cfg, value_model=value)
    return [p.detach() - b for p, b in zip(params, before, strict=True)], metrics


CASES = [
    {"estimator": "grpo", "loss_aggregation": "token_mean"},
    {"estimator": "grpo", "loss_aggregation": "seq_mean_token_mean", "kl_estimator": "k1"},
    {"estimator": "grpo", "loss_aggregation": "seq_mean_token_sum", "kl_estimator": "k2"},
    {"estimator": "grpo", "loss_aggregation": "constant", "scale_rewards": "none"},
    {"estimator": "grpo", "kl_penalty": "reward", "kl_estimator": "k1", "entropy_coef": 0.01},
    {"estimator": "rloo", "loss_aggregation": "token_mean"},
    {"estimator": "gae", "gamma": 0.9, "gae_lambda": 0.8},
    {"estimator": "gae", "critic": "separate", "kl_penalty": "reward"},
    {"estimator": "gvpo", "beta": 0.5},
    {"estimator": "gvpo", "beta": 0.5, "gvpo_reference": "reference"},
]


@pytest.mark.parametrize("algorithm", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_micro_batch_1x8_equals_8x1(algorithm):
    """Batch 8 in one micro-batch and batch 1 accumulated 8 times give the same update."""
    cfg = config(**algorithm)
    batch = synthetic_batch(small_model())
    whole, metrics = one_update(cfg, 8, batch)
    split, _ = one_update(cfg, 1, batch)
    assert max(d.abs().max().item() for d in whole) > 1e-5  # the update is not empty
    for a, b in zip(whole, split, strict=True):
        assert_close(a, b, atol=2e-6, rtol=1e-4)
    assert metrics["train/optimizer_steps"] == 1.0


def test_gvpo_gradient_is_weighted_policy_gradient():
    """grad gvpo_loss = -beta/(k-1) * sum_i w_i grad log pi(y_i), one group of k = 4."""
    model = small_model()
    batch = synthetic_batch(model, groups=1, size=4)
    anchor = (token_logprobs(small_model(seed=3), batch.input_ids, batch.attention_mask)).detach()
    beta, k = 0.3, 4

    logprobs = token_logprobs(model, batch.input_ids, batch.attention_mask)
    loss, _ = gvpo_loss(logprobs, anchor, batch.loss_mask, batch.rewards, batch.group_ids, beta)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    logprobs = token_logprobs(model, batch.input_ids, batch.attention_mask)
    w = gvpo_weights(
        logprobs, anchor, batch.loss_mask, batch.rewards, batch.group_ids, beta
    ).detach()
    sequence_logp = (logprobs * batch.loss_mask).sum(-1)  # log pi(y_i)
    expected = torch.autograd.grad(
        -beta / (k - 1) * (w * sequence_logp).sum(), list(model.parameters())
    )
    assert max(g.abs().max().item() for g in grads) > 1e-6
    for g, e in zip(grads, expected, strict=True):
        assert_close(g, e, atol=1e-6, rtol=1e-4)


def test_gvpo_weights_sum_to_zero_per_group():
    gen = torch.Generator().manual_seed(0)
    logprobs, anchor = torch.randn(12, 7, generator=gen), torch.randn(12, 7, generator=gen)
    mask = (torch.rand(12, 7, generator=gen) < 0.6).float()
    rewards = torch.rand(12, generator=gen)
    groups = torch.tensor([3, 3, 3, 0, 0, 0, 0, 7, 7, 7, 7, 7])
    w = gvpo_weights(logprobs, anchor, mask, rewards, groups, 0.7)
    for g in (0, 3, 7):
        assert abs(w[groups == g].sum().item()) < 1e-5


def test_gvpo_with_reference_is_nontrivial_on_the_first_update():
    """With pi_theta' = the reference, the first update moves the policy (rewards differ),
    and after it the implicit rewards are no longer zero."""
    cfg = config(estimator="gvpo", beta=0.5, gvpo_reference="reference")
    batch = synthetic_batch(small_model())
    deltas, metrics = one_update(cfg, 8, batch)
    assert max(d.abs().max().item() for d in deltas) > 1e-4
    assert metrics["loss/policy"] > 0
    # A second update from the moved policy: Delta_i = log pi - log ref != 0.
    policy, ref = small_model(), small_model().requires_grad_(False)
    params = list(policy.parameters())
    for p, d in zip(params, deltas, strict=True):
        p.data += d
    scored = score_batch(policy, ref, None, batch, cfg)
    estimated, _ = estimate(scored, ESTIMATORS["gvpo"](cfg.algorithm), cfg)
    second = policy_update(policy, estimated, sgd(params), cfg)
    assert abs(second["gvpo/implicit_reward_mean"]) > 1e-4


def test_num_iterations_and_minibatches_take_several_steps_with_clipping():
    cfg = config(
        estimator="grpo", num_iterations=3, num_minibatches=2, clip_eps_low=0.01, clip_eps_high=0.01
    )
    batch = synthetic_batch(small_model())
    policy = small_model()
    scored = score_batch(policy, None, None, batch, cfg)
    estimated, _ = estimate(scored, ESTIMATORS["grpo"](cfg.algorithm), cfg)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    optim = Optimization(
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        torch.amp.GradScaler("cuda", enabled=False),
    )
    metrics = policy_update(policy, estimated, optim, cfg, seed=0)
    assert metrics["train/optimizer_steps"] == 6.0
    # Later passes see the policy moved away from the behavior log-probs: ratios clip.
    assert metrics["train/clip_frac"] > 0
    with pytest.raises(ValueError, match="num_minibatches=3 exceeds the 2 groups"):
        policy_update(policy, estimated, optim, config(num_minibatches=3))


def test_ppo_estimators_refuse_groups_without_behavior_logprobs():
    model = small_model()
    batch = dataclasses.replace(synthetic_batch(model), has_behavior_logprobs=False)
    with pytest.raises(ValueError, match=r"uses a PPO ratio.*estimator=.gvpo."):
        score_batch(model, None, None, batch, config(estimator="grpo"))
    # GVPO scores them under the current policy instead.
    scored = score_batch(model, None, None, batch, config(estimator="gvpo", beta=0.5))
    with torch.no_grad():
        expected = token_logprobs(model, batch.input_ids, batch.attention_mask) * batch.loss_mask
    assert_close(scored.old_logprobs, expected)
