"""Off-policy groups: built from plain records, trained on with GVPO, refused by PPO."""

import pytest
import torch

from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.batch import build_batch
from turnrl.training.config import TrainingConfig
from turnrl.training.offline import groups_from_completions
from turnrl.training.trainer import Trainer
from turnrl.types import Message


def test_groups_from_completions_tokenize_and_mask(tiny_agent):
    groups = groups_from_completions(
        tiny_agent,
        [
            ("What is 2+3?", ["5", "6", "7"], [1.0, 0.0, 0.0]),
            (
                [Message(role="user", content="What is 1+1?")],
                [
                    [Message(role="assistant", content="3")],
                    [
                        Message(role="assistant", content="3"),
                        Message(role="user", content="Wrong. Try again."),
                        Message(role="assistant", content="2"),
                    ],
                ],
                [0.0, 0.5],
            ),
        ],
    )
    assert [len(g) for g in groups] == [3, 2]
    assert groups[0].scenario.id.startswith("offline-")
    assert [t.reward for t in groups[1]] == [0.0, 0.5]
    assert all(t.turns[0].logprobs is None for g in groups for t in g)
    batch = build_batch(groups, pad_token_id=tiny_agent.tokenizer.pad_token_id)
    assert not batch.has_behavior_logprobs
    # "5<|end|>": 2 trained tokens; the two-turn trajectory trains "3<|end|>" and "2<|end|>".
    assert batch.loss_mask.sum(-1).tolist() == [2.0, 2.0, 2.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="2 completions but 1 rewards"):
        groups_from_completions(tiny_agent, [("q", ["a", "b"], [1.0])])


def _trainer(agent, tmp_path, **algorithm):
    config = TrainingConfig.from_profile(
        "balanced",
        algorithm=algorithm,
        optim={"lr": 1e-3, "warmup_steps": 0},
        generation={"max_new_tokens": 4},
        rollout={"scenarios_per_step": 2, "num_generations": 3},
        run={"output_dir": str(tmp_path / "run"), "max_steps": 3},
    )
    return Trainer(agent, ArithmeticEnvironment(make_scenarios(n=4)), None, config)


@pytest.mark.anyio
async def test_gvpo_trains_on_fresh_and_replayed_groups(tiny_agent, tmp_path):
    trainer = _trainer(tiny_agent, tmp_path, estimator="gvpo", beta=0.5)
    fresh = await trainer.collect_groups()
    replayed = groups_from_completions(tiny_agent, [("What is 2+3?", ["5", "9", "x"], [1, 0, 0])])
    before = [p.detach().clone() for p in tiny_agent.model.parameters()]
    metrics = await trainer.step(fresh + replayed)
    assert metrics["train/num_sequences"] == 9.0
    assert metrics["loss/policy"] > 0
    assert any(
        (p - b).abs().max() > 0 for p, b in zip(tiny_agent.model.parameters(), before, strict=True)
    )
    # The replayed rewards were kept, not re-scored by the environment.
    assert [t.reward for t in replayed[0]] == [1.0, 0.0, 0.0]


@pytest.mark.anyio
async def test_ppo_estimators_say_why_they_refuse_replayed_groups(tiny_agent, tmp_path):
    trainer = _trainer(tiny_agent, tmp_path, estimator="grpo")
    replayed = groups_from_completions(tiny_agent, [("What is 2+3?", ["5", "9"], [1, 0])])
    with pytest.raises(ValueError, match="PPO ratio"):
        await trainer.step(replayed)
    assert torch.isfinite(next(tiny_agent.model.parameters())).all()
