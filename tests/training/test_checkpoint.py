"""Checkpoints: exact resume, keep-last-K, clear errors for broken ones."""

import json

import pytest
import torch

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.logging import read_metrics
from turnrl.training.checkpoint import CheckpointError, list_checkpoints
from turnrl.training.config import TrainingConfig
from turnrl.training.rundir import RunDirError
from turnrl.training.trainer import Trainer


class Killed(Exception):
    pass


def make(tiny_path, run_dir, **run):
    torch.manual_seed(0)
    agent = TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=4))
    config = TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 1e-3, "warmup_steps": 1},
        generation={"max_new_tokens": 4},
        rollout={"scenarios_per_step": 2, "num_generations": 4},
        run={"output_dir": str(run_dir), "max_steps": 4, "checkpoint_every": 2, **run},
    )
    return agent, config


def comparable(records):
    return [
        {k: v for k, v in r.items() if not k.startswith("perf/")}
        for r in records
        if "rollout/reward_mean" in r
    ]


@pytest.mark.anyio
async def test_resume_matches_an_uninterrupted_run_step_for_step(tiny_path, tmp_path):
    scenarios = make_scenarios(n=6)
    agent, config = make(tiny_path, tmp_path / "a")
    await Trainer(agent, ArithmeticEnvironment(scenarios), None, config).train()
    uninterrupted = comparable(read_metrics(tmp_path / "a"))

    agent, config = make(tiny_path, tmp_path / "b")
    trainer = Trainer(agent, ArithmeticEnvironment(scenarios), None, config)
    original = trainer.step

    async def killed_in_step_3(groups=None):
        if trainer.step_count == 2:
            raise Killed
        return await original(groups)

    trainer.step = killed_in_step_3
    with pytest.raises(Killed):
        await trainer.train()
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-000002"]

    agent, config = make(tiny_path, tmp_path / "b")  # a fresh process would start like this
    resumed = Trainer(agent, ArithmeticEnvironment(scenarios), None, config, resume=True)
    assert resumed.step_count == 2
    await resumed.train()
    assert comparable(read_metrics(tmp_path / "b")) == uninterrupted
    # Both checkpoints (2 and 4) kept with keep_checkpoints=2.
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-000002", "step-000004"]


@pytest.mark.anyio
async def test_keep_last_k_and_broken_checkpoints_are_named(tiny_path, tmp_path):
    scenarios = make_scenarios(n=4)
    agent, config = make(tiny_path, tmp_path / "run", checkpoint_every=1, keep_checkpoints=2)
    trainer = Trainer(agent, ArithmeticEnvironment(scenarios), None, config)
    await trainer.train()
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["step-000003", "step-000004"]
    latest = list_checkpoints(tmp_path / "run")[-1]
    # The frozen reference is in every checkpoint, stored once on disk (hard links).
    references = [(c / "reference.safetensors").stat() for c in list_checkpoints(tmp_path / "run")]
    assert references[0].st_ino == references[1].st_ino and references[0].st_nlink == 2
    # Leftovers of a save killed half-way are ignored.
    (latest.parent / ".step-000005.tmp").mkdir()
    assert list_checkpoints(tmp_path / "run")[-1] == latest

    (latest / "optimizer.pt").unlink()
    agent, config = make(tiny_path, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"optimizer\.pt is missing"):
        Trainer(agent, ArithmeticEnvironment(scenarios), None, config, resume=latest)

    older = list_checkpoints(tmp_path / "run")[0]
    (older / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RunDirError, match=r"checkpoints after step-000003 exist \(step-000004\)"):
        Trainer(agent, ArithmeticEnvironment(scenarios), None, config, resume=older)
    agent, config = make(tiny_path, tmp_path / "run", overwrite=True)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read"):
        Trainer(agent, ArithmeticEnvironment(scenarios), None, config, resume=older)
    assert len(list_checkpoints(tmp_path / "run")) == 2  # a failed resume deletes nothing

    agent, config = make(tiny_path, tmp_path / "empty")
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        Trainer(agent, ArithmeticEnvironment(scenarios), None, config, resume=True)


@pytest.mark.parametrize(
    ("contents", "named"),
    [
        ("{broken", r"trainer\.json: not valid JSON"),
        ('{"step": 1}', r"trainer\.json: expected \{step, order, order_rng\}.*'order'"),
        ('{"step": -3, "order": [], "order_rng": [3, [1], null]}', r"step must be an integer >= 0"),
        ('{"step": 1, "order": ["a"], "order_rng": [3, [1], null]}', r"order must be a list"),
        ('{"step": 1, "order": [], "order_rng": "x"}', r"trainer\.json: expected"),
    ],
)
@pytest.mark.anyio
async def test_bad_trainer_json_is_named_on_resume(tiny_path, tmp_path, contents, named):
    scenarios = make_scenarios(n=4)
    agent, config = make(tiny_path, tmp_path / "run", max_steps=1, checkpoint_every=1)
    await Trainer(agent, ArithmeticEnvironment(scenarios), None, config).train()
    (list_checkpoints(tmp_path / "run")[-1] / "trainer.json").write_text(contents)
    agent, config = make(tiny_path, tmp_path / "run", max_steps=1, checkpoint_every=1)
    with pytest.raises(CheckpointError, match=named):
        Trainer(agent, ArithmeticEnvironment(scenarios), None, config, resume=True)


@pytest.mark.anyio
async def test_a_checkpoint_of_another_model_is_refused(tiny_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from turnrl.agents.tiny import build_tiny_model

    scenarios = make_scenarios(n=4)
    agent, config = make(tiny_path, tmp_path / "run", max_steps=1, checkpoint_every=1)
    await Trainer(agent, ArithmeticEnvironment(scenarios), None, config).train()
    other = build_tiny_model("10m")
    other.save_pretrained(tmp_path / "other")
    bigger = TransformersAgent(
        AutoModelForCausalLM.from_pretrained(tmp_path / "other"), agent.tokenizer
    )
    checkpoint = list_checkpoints(tmp_path / "run")[-1]
    # The run records its model, so the other one is named before any weight is read...
    with pytest.raises(CheckpointError, match=r"model\.path: None -> '.*other'"):
        Trainer(bigger, ArithmeticEnvironment(scenarios), None, config, resume=checkpoint)
    # ...and forcing the resume still cannot load weights that do not fit.
    with pytest.raises(CheckpointError, match="does not fit the model"):
        Trainer(
            bigger,
            ArithmeticEnvironment(scenarios),
            None,
            config,
            resume=checkpoint,
            force_resume=True,
        )
    assert json.loads((checkpoint / "trainer.json").read_text())["step"] == 1
