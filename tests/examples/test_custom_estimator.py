"""examples/custom_estimator.py and examples/off_policy_groups.py: what they compute."""

import importlib.util
from pathlib import Path

import pytest
import torch

from turnrl.training.batch import RolloutBatch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_estimator_is_a_median_baseline():
    module = load("custom_estimator")
    n = 4
    batch = RolloutBatch(
        input_ids=torch.zeros(n, 2, dtype=torch.long),
        attention_mask=torch.ones(n, 2, dtype=torch.long),
        loss_mask=torch.tensor([[0.0, 1.0]] * n),
        behavior_logprobs=torch.zeros(n, 2),
        has_behavior_logprobs=True,
        token_rewards=torch.zeros(n, 2),
        rewards=torch.tensor([1.0, 0.0, 0.0, 0.5]),
        group_ids=torch.tensor([0, 0, 0, 1]),
        terminated=torch.ones(n, dtype=torch.bool),
        truncated=torch.zeros(n, dtype=torch.bool),
    )
    # group 0 median 0 -> (1, 0, 0); group 1 alone -> 0
    assert module.median_baseline(batch)[:, 1].tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.anyio
async def test_off_policy_example_mixes_fresh_replayed_and_demonstration_groups(tmp_path):
    history = await load("off_policy_groups").main(2, str(tmp_path / "run"))
    # step 1: 4 fresh groups x 4 + 2 demonstration groups x 3; step 2 adds a replayed group
    assert history[0]["train/num_sequences"] == 4 * 4 + 2 * 3
    assert history[1]["train/num_sequences"] == 4 * 4 + 4 + 2 * 3
