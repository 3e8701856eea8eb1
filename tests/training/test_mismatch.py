"""Rollout/trainer mismatch: hand-worked weights, metrics, config checks, and real runs."""

import json
import math

import pytest
import torch
from torch.testing import assert_close

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.logging import read_metrics
from turnrl.rewards import reward_function
from turnrl.training.algorithms import PPO_CLIP, StepSizes, ppo_clip_policy_loss
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import AlgorithmConfig, MismatchConfig, TrainingConfig
from turnrl.training.errors import ResumeConfigError
from turnrl.training.mismatch import importance_weights, log_weights, mismatch_metrics
from turnrl.training.resume import check_resume_config
from turnrl.training.trainer import Trainer
from turnrl.types import flatten

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)

# Two rows; sampled tokens at columns 1, 2 (row 0) and 1 (row 1).
MASK = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
TRAINER = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -0.5, 0.0, 0.0]])
# trainer - engine on the sampled tokens: ln 2, -ln 4 (row 0); ln 3 (row 1).
ENGINE = TRAINER - torch.tensor([[0.0, LN2, -LN4, 0.0], [0.0, LN3, 0.0, 0.0]])


def weights(correction, level="token", trajectory_ids=None, **bounds):
    config = MismatchConfig(correction=correction, level=level, **bounds)
    return importance_weights(TRAINER, ENGINE, MASK, config, trajectory_ids)


def test_token_level_ratios_are_per_token():
    # exp(ln 2) = 2, exp(-ln 4) = 0.25, exp(ln 3) = 3; 0 off the mask.
    expected = torch.tensor([[0.0, LN2, -LN4, 0.0], [0.0, LN3, 0.0, 0.0]])
    assert_close(log_weights(TRAINER, ENGINE, MASK), expected)


def test_tis_token_level_truncates_at_the_cap():
    w, changed = weights("tis", cap=2.5)
    # min(2, 2.5) = 2, min(0.25, 2.5) = 0.25, min(3, 2.5) = 2.5
    assert_close(w, torch.tensor([[0.0, 2.0, 0.25, 0.0], [0.0, 2.5, 0.0, 0.0]]))
    assert changed.tolist() == [[False, False, False, False], [False, True, False, False]]


def test_mis_token_level_drops_tokens_outside_the_bounds():
    w, changed = weights("mis", cap=2.5)  # lower = 1 / 2.5 = 0.4
    # 2 is in [0.4, 2.5] (kept); 0.25 < 0.4 and 3 > 2.5 (dropped)
    assert_close(w, torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert changed.tolist() == [[False, False, True, False], [False, True, False, False]]
    w, _ = weights("mis", cap=2.5, lower=0.2)  # now 0.25 is kept
    assert_close(w, torch.tensor([[0.0, 2.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_sequence_level_weights_are_the_product_over_a_trajectory():
    # Row 0: exp(ln 2 - ln 4) = 0.5 on both tokens; row 1: exp(ln 3) = 3.
    w, changed = weights("tis", level="sequence", cap=2.0)  # min(0.5, 2), min(3, 2)
    assert_close(w, torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.0, 2.0, 0.0, 0.0]]))
    assert changed.sum().item() == 1
    w, _ = weights("mis", level="sequence", cap=2.0)  # [0.5, 2]: 0.5 kept (bound included), 3 not
    assert_close(w, torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    # One trajectory in two rows: exp(ln 2 - ln 4 + ln 3) = 1.5 on all three tokens.
    w, _ = weights("tis", level="sequence", trajectory_ids=torch.tensor([7, 7]), cap=2.0)
    assert_close(w, 1.5 * MASK)


def batch_of(trainer, engine, mask, trajectory_ids=None):
    n, t = mask.shape
    return RolloutBatch(
        input_ids=torch.zeros(n, t, dtype=torch.long),
        attention_mask=torch.ones(n, t, dtype=torch.long),
        loss_mask=mask,
        behavior_logprobs=engine,
        has_behavior_logprobs=True,
        token_rewards=torch.zeros(n, t),
        rewards=torch.zeros(n),
        group_ids=torch.zeros(n, dtype=torch.long),
        terminated=torch.ones(n, dtype=torch.bool),
        truncated=torch.zeros(n, dtype=torch.bool),
        trainer_logprobs=trainer,
        trajectory_ids=trajectory_ids,
    )


def test_metrics_by_hand():
    batch = batch_of(TRAINER, ENGINE, MASK)
    metrics = mismatch_metrics(batch, MismatchConfig(correction="mis", cap=2.5))
    # k3 = exp(d) - d - 1 with d = trainer - engine: ln 2 -> 0.306853, -ln 4 -> 0.636294,
    # ln 3 -> 0.901388; mean 0.614845.
    assert metrics["train/mismatch_kl"] == pytest.approx(0.614845, abs=1e-6)
    assert metrics["train/is_ratio_mean"] == pytest.approx((2 + 0.25 + 3) / 3)
    assert metrics["train/is_ratio_max"] == pytest.approx(3.0)
    assert metrics["train/is_masked_frac"] == pytest.approx(2 / 3)  # 0.25 and 3 dropped
    # Sequence level counts trajectories: weights 0.5 and 3; tis at 2 truncates one of two.
    metrics = mismatch_metrics(batch, MismatchConfig(correction="tis", level="sequence"))
    assert metrics["train/is_ratio_mean"] == pytest.approx(1.75)
    assert metrics["train/is_ratio_max"] == pytest.approx(3.0)
    assert metrics["train/is_truncated_frac"] == pytest.approx(0.5)
    assert "train/is_masked_frac" not in metrics
    # Without a correction: the measurement only.
    metrics = mismatch_metrics(batch, MismatchConfig())
    assert set(metrics) == {"train/mismatch_kl", "train/is_ratio_mean", "train/is_ratio_max"}
    assert mismatch_metrics(batch_of(None, ENGINE, MASK), MismatchConfig()) == {}


def test_ppo_clip_multiplies_each_token_term_by_its_weight():
    advantages = torch.tensor([[0.0, 1.0, -2.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    batch = batch_of(TRAINER, ENGINE, MASK)
    batch.old_logprobs, batch.advantages = TRAINER, advantages
    step = StepSizes(normalizer=3, groups=1, micro_batches=1, rank_tokens=3, rank_sequences=2)
    algo = AlgorithmConfig()
    # Ratio 1 (current = old): the terms are -A: -1, 2, -3; sum -2, over 3 tokens.
    plain, _ = ppo_clip_policy_loss(TRAINER, batch, algo, step)
    assert plain.item() == pytest.approx(-2 / 3)
    batch.is_weights = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    weighted, _ = ppo_clip_policy_loss(TRAINER, batch, algo, step)
    # -1 * 2 + 2 * 0 - 3 * 0.5 = -3.5, over 3 tokens
    assert weighted.item() == pytest.approx(-3.5 / 3)
    assert PPO_CLIP.takes_importance_weights


def test_config_refuses_a_correction_without_a_ppo_ratio_and_bounds_out_of_order():
    with pytest.raises(ValueError, match=r"mismatch\.correction: none"):
        TrainingConfig.from_profile(
            algorithm={"estimator": "gvpo", "beta": 0.1}, mismatch={"correction": "tis"}
        )
    gvpo = TrainingConfig.from_profile(algorithm={"estimator": "gvpo", "beta": 0.1})
    assert gvpo.mismatch.measure  # measured, not corrected
    with pytest.raises(ValueError, match="lower must be at most cap"):
        MismatchConfig(correction="mis", cap=2.0, lower=3.0)
    with pytest.raises(ValueError, match=r"mismatch\.level"):
        TrainingConfig.from_profile(mismatch={"level": "turn"})


@reward_function
def digits(trajectory):
    """Fraction of digits in the answers: it varies within a group, so the policy moves."""
    text = "".join(t.message.content for t in trajectory.turns)
    return sum(c.isdigit() for c in text) / max(len(text), 1)


def make(tiny_path, tmp_path, name, *, weights=None, mismatch=None, steps=2):
    torch.manual_seed(0)
    agent = TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=4))
    config = TrainingConfig.from_profile(
        "balanced",
        algorithm={"beta": 0.05},
        optim={"lr": 1e-3, "warmup_steps": 0},
        generation={"max_new_tokens": 4, "weights": weights},
        rollout={"scenarios_per_step": 2, "num_generations": 4},
        mismatch=mismatch or {},
        run={"output_dir": str(tmp_path / name), "max_steps": steps, "plot": False},
    )
    env = ArithmeticEnvironment(make_scenarios(n=8))
    return Trainer(agent, env, {digits: 1.0}, config)


@pytest.mark.anyio
@pytest.mark.parametrize("weights", ["shared", "copy"])
async def test_hf_engine_in_fp32_matches_the_trainer(tiny_path, tmp_path, weights):
    """The fp32 HF engine samples from what the trainer computes: mismatch_kl < 1e-6."""
    trainer = make(tiny_path, tmp_path, weights, weights=weights, steps=3)
    await trainer.train()
    records = [r for r in read_metrics(trainer.run_dir) if "train/mismatch_kl" in r]
    assert len(records) == 3  # every step, with the default correction none
    for record in records:
        assert 0 <= record["train/mismatch_kl"] < 1e-6
        assert record["train/is_ratio_max"] == pytest.approx(1.0, abs=1e-3)


def shift_engine(agent, shift):
    """Make the engine record ``log p - shift`` for every odd-indexed token of a completion."""
    generate = agent.engine.generate

    async def shifted(prompt_ids, params):
        completion = await generate(prompt_ids, params)
        completion.logprobs = [
            lp - (shift if i % 2 else 0.0) for i, lp in enumerate(completion.logprobs)
        ]
        return completion

    agent.engine.generate = shifted


@pytest.mark.anyio
async def test_a_mismatched_engine_is_measured_and_masked(tiny_path, tmp_path):
    trainer = make(tiny_path, tmp_path, "mis", mismatch={"correction": "mis", "cap": 2.0})
    shift_engine(trainer.agent, 1.0)  # odd tokens: w = exp(1) > 2, masked; even: w = 1, kept
    groups = await trainer.collect_groups()
    batch = trainer.prepare_batch(groups)
    odd = sum(len(t.completion_ids) // 2 for t in flatten(groups) for t in t.turns)
    total = sum(len(t.completion_ids) for t in flatten(groups) for t in t.turns)
    assert 0 < odd < total
    metrics = mismatch_metrics(batch, trainer.config.mismatch)
    assert metrics["train/is_masked_frac"] == pytest.approx(odd / total)
    # k3 of d = 1 on the odd tokens: e - 2; 0 on the others.
    assert metrics["train/mismatch_kl"] == pytest.approx((math.e - 2) * odd / total, rel=1e-4)
    assert metrics["train/is_ratio_max"] == pytest.approx(math.e, rel=1e-4)
    # The ratio's denominator is the trainer's; the masked tokens weigh 0, the others 1.
    assert batch.old_logprobs is batch.trainer_logprobs or torch.equal(
        batch.old_logprobs, batch.trainer_logprobs
    )
    on = batch.loss_mask.bool()
    assert_close(batch.is_weights[on], (batch.is_weights[on] > 0.5).float())
    assert int((batch.is_weights[on] == 0).sum()) == odd
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    step = await trainer.step(groups)
    assert step["train/is_masked_frac"] > 0 and step["train/mismatch_kl"] > 0.1
    after = list(trainer.policy.parameters())
    moved = any(not torch.equal(b, p) for b, p in zip(before, after, strict=True))
    assert moved and math.isfinite(step["loss/total"])
    trainer.close()


@pytest.mark.anyio
async def test_a_mismatched_engine_is_truncated_with_tis(tiny_path, tmp_path):
    trainer = make(tiny_path, tmp_path, "tis", mismatch={"correction": "tis", "cap": 2.0})
    shift_engine(trainer.agent, 1.0)
    batch = trainer.prepare_batch(await trainer.collect_groups())
    on = batch.loss_mask.bool()
    assert set(batch.is_weights[on].round(decimals=3).tolist()) == {1.0, 2.0}  # min(e, 2) = 2
    trainer.close()


def test_a_checkpoint_older_than_the_mismatch_section_resumes(tmp_path):
    """A checkpoint written before the section existed ran as its defaults: no change."""
    recorded = json.loads(TrainingConfig.from_profile().model_dump_json())
    del recorded["mismatch"]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    changes, refused = check_resume_config(tmp_path, TrainingConfig.from_profile(), force=False)
    assert changes == {} and refused == {}
    with pytest.raises(ResumeConfigError, match=r"mismatch\.correction"):
        corrected = TrainingConfig.from_profile(mismatch={"correction": "tis"})
        check_resume_config(tmp_path, corrected, force=False)
