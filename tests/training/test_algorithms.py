"""The algorithm table: the only place algorithm names are compared, and open to new entries."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from turnrl.training.advantages import make_gae, make_grpo, make_rloo, per_token
from turnrl.training.algorithms import (
    ALGORITHMS,
    GVPO,
    LOSSES,
    PPO_CLIP,
    Algorithm,
    PolicyLoss,
    algorithm_for,
    check_custom_estimator,
    estimator_factory,
    token_state_values,
)
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import AlgorithmConfig, TrainingConfig
from turnrl.training.estimate import estimate
from turnrl.training.gvpo import make_gvpo
from turnrl.training.optim import Optimization
from turnrl.training.turn_credit import make_turn_gae, make_turn_grpo, turn_state_values
from turnrl.training.update import logprobs_and_values, policy_update

PACKAGE = Path(__file__).resolve().parents[2] / "turnrl"


def test_table_entries():
    assert set(ALGORITHMS) == {"grpo", "rloo", "gae", "gvpo", "turn_grpo", "turn_gae"}
    assert set(LOSSES) == {"ppo_clip", "gvpo"}
    assert [a.estimator for a in ALGORITHMS.values()] == [
        make_grpo,
        make_rloo,
        make_gae,
        make_gvpo,
        make_turn_grpo,
        make_turn_gae,
    ]
    assert all(callable(a.estimator(AlgorithmConfig())) for a in ALGORITHMS.values())
    assert [k for k, a in ALGORITHMS.items() if a.critic] == ["gae", "turn_gae"]
    assert [k for k, a in ALGORITHMS.items() if a.whiten_advantages] == ["gae", "turn_gae"]
    assert [k for k, a in ALGORITHMS.items() if a.loss.whole_groups] == ["gvpo"]
    assert [k for k, a in ALGORITHMS.items() if not a.takes_custom_estimator] == ["gvpo"]
    assert [k for k, a in ALGORITHMS.items() if not a.compares_group] == ["gae", "turn_gae"]
    baselines = {k: a.value_baseline for k, a in ALGORITHMS.items() if a.critic}
    assert baselines == {"gae": token_state_values, "turn_gae": turn_state_values}


def test_no_name_comparisons_outside_the_table():
    names = "|".join(re.escape(n) for n in [*ALGORITHMS, *LOSSES])
    patterns = [
        rf"""(==|!=)\s*["']({names})["']""",  # x == "gvpo"
        rf"""["']({names})["']\s*(==|!=)""",  # "gvpo" == x
        rf"""\bin\s*[(\[{{][^)\]}}]*["']({names})["']""",  # x in ("grpo", ...)
        r"""\.(estimator|loss)\s*(==|!=|(not\s+)?in\s+(?!ALGORITHMS\b|LOSSES\b))""",
    ]
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        if where == "training/algorithms.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(re.search(p, line) for p in patterns):
                offenders.append(f"{where}:{number}: {line.strip()}")
    assert not offenders, "ask turnrl.training.algorithms instead:\n" + "\n".join(offenders)


def test_the_grep_finds_a_comparison(tmp_path, monkeypatch):
    """The test above can fail: it flags the comparisons it is meant to forbid."""
    (tmp_path / "bad.py").write_text('gvpo = algo.estimator == "gvpo"\n')
    (tmp_path / "good.py").write_text("spec = ALGORITHMS[config.estimator]\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path)
    with pytest.raises(AssertionError, match=r"bad\.py:1"):
        test_no_name_comparisons_outside_the_table()


def test_loss_is_separate_from_the_estimator():
    assert algorithm_for(AlgorithmConfig(estimator="gae")).loss is PPO_CLIP
    assert algorithm_for(AlgorithmConfig(estimator="gvpo")).loss is GVPO
    assert algorithm_for(AlgorithmConfig(estimator="rloo", loss="ppo_clip")).loss is PPO_CLIP
    assert algorithm_for(AlgorithmConfig(estimator="my.module:factory")).loss is PPO_CLIP
    with pytest.raises(ValueError, match="cannot train on estimator='grpo'"):
        AlgorithmConfig(estimator="grpo", loss="gvpo")
    with pytest.raises(ValueError, match="cannot train on estimator='gvpo'"):
        AlgorithmConfig(estimator="gvpo", loss="ppo_clip")
    with pytest.raises(ValueError, match=r"loss\n?.*unknown loss 'dpo'"):
        TrainingConfig.from_profile("balanced", algorithm={"loss": "dpo"})


def test_custom_estimators():
    assert estimator_factory("rloo") is make_rloo
    assert estimator_factory("turnrl.training.advantages:make_rloo") is make_rloo
    custom = algorithm_for(AlgorithmConfig(estimator="turnrl.training.advantages:make_rloo"))
    assert custom.estimator(AlgorithmConfig()).__name__ == "rloo"  # imported when called
    check_custom_estimator(AlgorithmConfig(estimator="gae"))
    with pytest.raises(ValueError, match="has its own loss"):
        check_custom_estimator(AlgorithmConfig(estimator="gvpo"))


# A toy algorithm, written the way a new one is added: an estimator factory, a loss,
# a constraint, and one table entry.
def make_toy(config):
    def toy(batch, values=None):
        return per_token(batch.rewards, batch.loss_mask)  # the raw reward as advantage

    return toy


def toy_loss(logprobs, micro, config, step):
    group_sizes = torch.bincount(micro.group_ids)
    seen_group_sizes.append(set(group_sizes[group_sizes > 0].tolist()))
    loss = -(micro.advantages * logprobs).sum() / step.normalizer
    return loss, {"toy/rows": float(len(micro))}


def toy_check(config):
    if config.entropy_coef > 0:
        raise ValueError("the toy algorithm takes no entropy bonus")


seen_group_sizes: list[set[int]] = []
TOY_LOSS = PolicyLoss(
    name="toy_loss",
    compute=toy_loss,
    whole_groups=True,
    needs_behavior_logprobs=False,
    adds_kl_term=False,
    takes_any_advantages=False,
    uses_reference=lambda config: False,
)
TOY = Algorithm(make_toy, TOY_LOSS, compares_group=True, whiten_advantages=True, check=toy_check)


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "toy", TOY)
    monkeypatch.setitem(LOSSES, "toy_loss", TOY_LOSS)
    seen_group_sizes.clear()


def test_a_new_entry_is_picked_up_by_config_validation(toy_registered):
    cfg = TrainingConfig.from_profile("balanced", algorithm={"estimator": "toy"})
    assert algorithm_for(cfg.algorithm) is TOY
    assert not cfg.algorithm.uses_reference  # its loss says so, beta 0.04 notwithstanding
    with pytest.raises(ValueError, match="takes no entropy bonus"):
        AlgorithmConfig(estimator="toy", entropy_coef=0.1)
    with pytest.raises(ValueError, match="needs num_generations >= 2"):
        TrainingConfig(algorithm={"estimator": "toy"}, rollout={"num_generations": 1})
    with pytest.raises(ValueError, match="has its own loss"):
        check_custom_estimator(cfg.algorithm)


def test_a_new_entry_is_picked_up_by_the_update(toy_registered):
    cfg = TrainingConfig.from_profile(
        "balanced",
        algorithm={"estimator": "toy", "beta": 0.0},
        optim={"micro_batch_size": 3, "max_grad_norm": None},
    )
    policy = tiny_model()
    n, width = 8, 6
    batch = RolloutBatch(
        input_ids=torch.randint(1, 20, (n, width), generator=torch.Generator().manual_seed(0)),
        attention_mask=torch.ones(n, width, dtype=torch.long),
        loss_mask=torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 0.0]] * n),
        behavior_logprobs=torch.zeros(n, width),
        has_behavior_logprobs=False,  # refused by PPO-clip; the toy loss does not need them
        token_rewards=torch.zeros(n, width),
        rewards=torch.arange(n, dtype=torch.float32),
        group_ids=torch.arange(n) // 4,
        terminated=torch.ones(n, dtype=torch.bool),
        truncated=torch.zeros(n, dtype=torch.bool),
    )
    scored = logprobs_and_values(policy, None, None, batch, cfg)
    estimated, _ = estimate(scored, make_toy(cfg.algorithm), cfg)
    mask = batch.loss_mask
    assert_close((estimated.advantages * mask).sum() / mask.sum(), torch.tensor(0.0))  # whitened
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    optim = Optimization(
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        torch.amp.GradScaler("cuda", enabled=False),
    )
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = policy_update(policy, estimated, optim, cfg)
    # Whole groups of 4 per micro-batch, though micro_batch_size is 3: two calls.
    assert seen_group_sizes == [{4}, {4}]
    assert metrics["toy/rows"] == 8.0 and "train/clip_frac" not in metrics
    assert any(not torch.equal(p, b) for p, b in zip(policy.parameters(), before, strict=True))


def test_an_entry_changes_with_the_table_not_the_code(toy_registered, monkeypatch):
    """Whitening off in a copy of the entry: estimate follows the table."""
    monkeypatch.setitem(ALGORITHMS, "toy", dataclasses.replace(TOY, whiten_advantages=False))
    cfg = TrainingConfig.from_profile("balanced", algorithm={"estimator": "toy", "beta": 0.0})
    n = 4
    batch = RolloutBatch(
        input_ids=torch.ones(n, 3, dtype=torch.long),
        attention_mask=torch.ones(n, 3, dtype=torch.long),
        loss_mask=torch.ones(n, 3),
        behavior_logprobs=torch.zeros(n, 3),
        has_behavior_logprobs=True,
        token_rewards=torch.zeros(n, 3),
        rewards=torch.tensor([1.0, 2.0, 3.0, 4.0]),
        group_ids=torch.tensor([0, 0, 1, 1]),
        terminated=torch.ones(n, dtype=torch.bool),
        truncated=torch.zeros(n, dtype=torch.bool),
        old_logprobs=torch.zeros(n, 3),
    )
    estimated, _ = estimate(batch, make_toy(cfg.algorithm), cfg)
    assert_close(estimated.advantages, batch.rewards[:, None].expand(n, 3))


def tiny_model():
    config = LlamaConfig(
        vocab_size=24,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)
