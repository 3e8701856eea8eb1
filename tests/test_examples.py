"""Smoke runs of the examples and the CLI (short versions of what users run)."""

import importlib.util
import json
from pathlib import Path

import pytest

from turnrl.cli.main import build_parser, main

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
async def test_custom_environment_example_trains(tmp_path):
    summary = await load("custom_environment").main(2, str(tmp_path / "run"))
    assert summary["steps"] == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


@pytest.mark.anyio
async def test_train_arithmetic_example_runs(tmp_path):
    result = await load("train_arithmetic").main(2, 5, str(tmp_path / "run"))
    assert result["steps"] == 2 and result["eval_before"] is not None
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_cli_demo_short_run(tmp_path, capsys):
    code = main(["demo", "--steps", "1", "--warmstart-steps", "2", "--output", str(tmp_path / "d")])
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out reward before RL" in out and "gain" in out
    assert (tmp_path / "d" / "metrics.jsonl").exists()


def test_cli_help_and_bad_arguments(capsys):
    assert "demo" in build_parser().format_help()
    assert main(["demo", "--steps", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["nonsense"])


@pytest.mark.anyio
async def test_custom_estimator_example_trains(tmp_path):
    summary = await load("custom_estimator").main(2, str(tmp_path / "run"))
    assert summary["steps"] == 2
    module = load("custom_estimator")
    import torch

    from turnrl.training.batch import RolloutBatch

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
