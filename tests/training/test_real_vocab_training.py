"""Two training steps with each real chat template over the Qwen vocabulary."""

import pytest
import torch

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.rewards import reward_function
from turnrl.testing.real_vocab import real_vocab_model
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer


@reward_function
def short(trajectory):
    """Higher for shorter first replies: varies across a group of random replies."""
    return -len(trajectory.turns[0].message.content) / 100


@pytest.mark.anyio
@pytest.mark.parametrize(
    "template, attempts",
    # Llama 3 trims replies, so its multi-turn episodes are step-wise samples
    # (tests/agents/test_real_vocab.py::test_step_wise_batches); one attempt here.
    [("qwen2.5", 2), ("qwen3", 2), ("llama3", 1)],
)
async def test_two_steps_train_on_a_real_template(real_vocab, tmp_path, template, attempts):
    torch.manual_seed(0)
    tokenizer = real_vocab(template)
    agent = TransformersAgent(
        real_vocab_model(tokenizer), tokenizer, sampling=SamplingParams(max_new_tokens=4)
    )
    config = TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 1e-2, "micro_batch_size": 8, "warmup_steps": 0},
        rollout={"scenarios_per_step": 2, "num_generations": 4},
        eval={"every": 0},
        run={"max_steps": 2, "output_dir": str(tmp_path / "run"), "save_final": False},
    )
    env = ArithmeticEnvironment(make_scenarios(n=4), max_attempts=attempts)
    trainer = Trainer(agent, env, {short: 1.0}, config)
    before = [p.detach().clone() for p in agent.model.parameters()]
    metrics = [await trainer.step() for _ in range(2)]
    trainer.close()
    assert all(m["rollout/failed"] == 0 for m in metrics)
    assert all(torch.isfinite(torch.tensor(m["loss/policy"])) for m in metrics)
    assert any(not torch.equal(b, p) for b, p in zip(before, agent.model.parameters(), strict=True))
