"""The trainer syncs the agent's engine after each update: versions, and copy == shared."""

import pytest
import torch

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.logging import read_metrics
from turnrl.rewards import reward_function
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer
from turnrl.types import flatten


@reward_function
def digits(trajectory):
    """Fraction of digits in the answers: it varies within a group, so the policy moves."""
    text = "".join(t.message.content for t in trajectory.turns)
    return sum(c.isdigit() for c in text) / max(len(text), 1)


def setup(tiny_path, tmp_path, name, *, weights=None, lora=False, **run):
    """A fresh agent, environment and config (seeded)."""
    torch.manual_seed(0)
    agent = TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=4))
    config = TrainingConfig.from_profile(
        "balanced",
        model={"lora": {"r": 4, "alpha": 8}} if lora else {},
        algorithm={"beta": 0.05},
        optim={"lr": 1e-2 if lora else 1e-3, "warmup_steps": 0},
        generation={"max_new_tokens": 4, "weights": weights},
        rollout={"scenarios_per_step": 2, "num_generations": 4},
        run={"output_dir": str(tmp_path / name), "max_steps": 3, "plot": False, **run},
    )
    return agent, ArithmeticEnvironment(make_scenarios(n=8)), {digits: 1.0}, config


def make(*args, **kwargs):
    return Trainer(*setup(*args, **kwargs))


def comparable(run_dir):
    records = read_metrics(run_dir)
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


@pytest.mark.anyio
async def test_turns_record_the_version_the_trainer_advances(tiny_path, tmp_path):
    trainer = make(tiny_path, tmp_path, "run", weights="copy")
    for step in range(2):
        groups = await trainer.collect_groups()
        assert {t.policy_version for t in flatten(groups) for t in t.turns} == {step}
        await trainer.step(groups)
        assert trainer.agent.engine.policy_version == trainer.step_count == step + 1


@pytest.mark.anyio
async def test_config_selects_copy_mode_and_the_copy_follows_the_policy(tiny_path, tmp_path):
    trainer = make(tiny_path, tmp_path, "run", weights="copy")
    engine = trainer.agent.engine
    assert engine.weights == "copy" and engine.model is not trainer.policy
    await trainer.step()
    for (name, live), (_, copied) in zip(
        trainer.policy.named_parameters(), engine.model.named_parameters(), strict=True
    ):
        assert torch.equal(live, copied), name


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.anyio
async def test_copy_mode_trains_exactly_like_shared_mode(tiny_path, tmp_path, lora):
    # The copy is synced after every update, before the next rollout, and the same
    # arithmetic runs on the same CPU; only where the weights live differs. A full
    # fine-tune is bitwise equal. With LoRA, some CPUs (seen on AMD EPYC, not on Intel
    # Xeon) round a few of the copy's generation log-probs differently in the last
    # bit (4.8e-7 on 3 of 24 turns, same tokens), and the PPO ratio carries that into
    # the update: equal to float rounding, and the same tokens sampled.
    if lora:
        pytest.importorskip("peft")
    runs = {}
    for weights in ("shared", "copy"):
        trainer = make(tiny_path, tmp_path, weights, weights=weights, lora=lora)
        await trainer.train()
        runs[weights] = comparable(tmp_path / weights), dict(trainer.policy.state_dict())
    (shared_metrics, shared_state), (copy_metrics, copy_state) = runs["shared"], runs["copy"]
    assert len(shared_metrics) == 3 and len(copy_metrics) == 3
    assert all(r["train/kl"] > 0 for r in shared_metrics[1:])  # the policy did move
    if not lora:
        assert copy_metrics == shared_metrics
        assert all(torch.equal(copy_state[k], v) for k, v in shared_state.items())
        return
    for theirs, ours in zip(copy_metrics, shared_metrics, strict=True):
        assert theirs.keys() == ours.keys()
        for key, value in ours.items():
            if key.startswith(("rollout/", "reward/")):  # the same tokens were sampled
                assert theirs[key] == value, key
            else:
                assert theirs[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for name, tensor in shared_state.items():  # Adam steps of lr 1e-2: within 1% of one
        torch.testing.assert_close(copy_state[name], tensor, rtol=0, atol=1e-4)


@pytest.mark.anyio
async def test_resume_syncs_the_copy_with_the_checkpoint(tiny_path, tmp_path):
    first = make(tiny_path, tmp_path, "run", checkpoint_every=2, max_steps=2)
    await first.train()
    setting = setup(tiny_path, tmp_path, "run", weights="copy", max_steps=4)
    resumed = Trainer(*setting, resume=True)
    engine = resumed.agent.engine
    assert engine.policy_version == 2
    for (name, live), (_, copied) in zip(
        resumed.policy.named_parameters(), engine.model.named_parameters(), strict=True
    ):
        assert torch.equal(live, copied), name
