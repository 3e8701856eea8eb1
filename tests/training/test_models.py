"""turnrl.training.models: a run records where its model came from, so its checkpoints reload."""

import json
import shutil

import pytest
import torch

from turnrl.agents.tiny import build_tiny_model, build_tiny_tokenizer
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.config import TrainingConfig
from turnrl.training.export import load_policy
from turnrl.training.models import record_model
from turnrl.training.trainer import Trainer


def config(run_dir, **model):
    return TrainingConfig.from_profile(
        "balanced",
        model=model,
        generation={"max_new_tokens": 3},
        rollout={"scenarios_per_step": 2, "num_generations": 2},
        run={"output_dir": str(run_dir), "max_steps": 1, "checkpoint_every": 1},
    )


def test_the_embedded_model_is_recorded_as_none(tiny_agent, tmp_path):
    assert record_model(config(tmp_path), tiny_agent).model.path is None


def test_a_relative_path_to_the_agents_model_is_made_absolute(tiny_path, tmp_path, monkeypatch):
    shutil.copytree(tiny_path, tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    agent = TransformersAgent.from_pretrained("mine")
    recorded = record_model(config(tmp_path, path="mine"), agent).model.path
    assert recorded == str((tmp_path / "mine").resolve())


def test_a_given_path_is_kept_and_the_dtype_is_the_policys(tiny_agent, tmp_path):
    given = config(tmp_path, path="/models/mine")
    assert record_model(given, tiny_agent) is given  # nothing to add: the same object
    tiny_agent.model.to(torch.bfloat16)
    recorded = record_model(given, tiny_agent).model
    assert (recorded.path, recorded.dtype) == ("/models/mine", "bfloat16")


@pytest.mark.anyio
async def test_a_script_runs_checkpoint_reloads_its_own_model(tmp_path, monkeypatch):
    # A model that is not the embedded one (2 layers, not 4), loaded by a relative path.
    build_tiny_model(num_hidden_layers=2).save_pretrained(tmp_path / "small")
    build_tiny_tokenizer().save_pretrained(tmp_path / "small")
    monkeypatch.chdir(tmp_path)
    agent = TransformersAgent.from_pretrained("small")
    trainer = Trainer(agent, ArithmeticEnvironment(make_scenarios(n=4)), None, config("run"))
    await trainer.train()
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["path"]
    assert recorded == str((tmp_path / "small").resolve())
    # The checkpoint names the model it was trained from, not the embedded one.
    checkpoint = next((tmp_path / "run" / "checkpoints").iterdir())
    loaded = load_policy(checkpoint)
    assert loaded.model.config.num_hidden_layers == 2
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, trainer.policy.state_dict()[name]), name
