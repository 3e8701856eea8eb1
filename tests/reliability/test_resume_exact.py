"""Interrupted and resumed runs equal uninterrupted ones, bit for bit, for every experiment shape.

Each shape trains 3 steps with a checkpoint every 2 through `turnrl train`'s own path
(:func:`turnrl.cli.train.run_experiment`), once straight through and once killed in step 3 and
resumed. The metrics (timings aside) and every saved tensor (policy, critic, reference)
must be identical. Every shape starts from a supervised warm-start, so the KL reference
differs from the model on disk: it must come back from the checkpoint (with LoRA it is the
base model under the adapters, saved with the policy).
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from turnrl.cli.train import run_experiment
from turnrl.experiment.build import Experiment, build_experiment
from turnrl.experiment.config import load_experiment
from turnrl.training.trainer import Trainer

WARMSTART = {
    "demonstrations": {"target": "turnrl.environments.tasks:demonstrations", "args": {}},
    "steps": 3,
    "lr": 1e-2,
    "batch_size": 8,
}
SHAPES = {
    "warmstart": {"algorithm": {"estimator": "grpo", "beta": 0.1}, "warmstart": WARMSTART},
    "lora": {
        "model": {"lora": {"r": 4, "alpha": 8}},
        "algorithm": {"estimator": "grpo", "beta": 0.1},
        "warmstart": WARMSTART,
    },
    "gae_critic": {
        "algorithm": {"estimator": "gae", "critic": "separate", "beta": 0.1},
        "warmstart": WARMSTART,
    },
    "gvpo": {
        "algorithm": {"estimator": "gvpo", "gvpo_reference": "reference", "beta": 0.1},
        "warmstart": WARMSTART,
    },
}


class Killed(Exception):
    pass


def experiment_config(run_dir, shape):
    data = {
        "environment": {"target": "turnrl.environments.tasks:ArithmeticEnvironment"},
        "scenarios": {
            "train": {"target": "turnrl.environments.tasks:make_scenarios", "args": {"n": 8}}
        },
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "generation": {"max_new_tokens": 3},
        "rollout": {"scenarios_per_step": 2, "num_generations": 3},
        "run": {
            "output_dir": str(run_dir),
            "max_steps": 3,
            "checkpoint_every": 2,
            "plot": False,
        },
        **SHAPES[shape],
    }
    return load_experiment(data=data)


async def train(run_dir, shape, *, resume=False):
    torch.manual_seed(0)  # a fresh process: the model loads the same way each time
    experiment = build_experiment(experiment_config(run_dir, shape))
    return await run_experiment(experiment, resume=resume)


def comparable(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def tensors(checkpoint):
    return {
        f"{file.name}:{name}": tensor
        for file in sorted(checkpoint.glob("*.safetensors"))
        for name, tensor in load_file(file).items()
    }


@pytest.mark.anyio
@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_resume_is_bitwise_identical_to_the_uninterrupted_run(shape, tmp_path, monkeypatch):
    await train(tmp_path / "straight", shape)

    step = Trainer.step

    async def killed_in_step_3(self, groups=None):
        if self.step_count == 2:
            raise Killed
        return await step(self, groups)

    monkeypatch.setattr(Trainer, "step", killed_in_step_3)
    with pytest.raises(Killed):
        await train(tmp_path / "resumed", shape)
    monkeypatch.setattr(Trainer, "step", step)

    def warmstart_again(self):
        raise AssertionError("a resume must not warm-start: the checkpoint holds the weights")

    monkeypatch.setattr(Experiment, "warmstart", warmstart_again)
    await train(tmp_path / "resumed", shape, resume=True)

    assert comparable(tmp_path / "resumed") == comparable(tmp_path / "straight")
    final = {run: tmp_path / run / "checkpoints" / "step-000003" for run in ("straight", "resumed")}
    straight, resumed = tensors(final["straight"]), tensors(final["resumed"])
    assert straight.keys() == resumed.keys()
    expected = {"model.safetensors"} | {
        "warmstart": {"reference.safetensors"},
        "gae_critic": {"reference.safetensors", "value_model.safetensors"},
        "gvpo": {"reference.safetensors"},
    }.get(shape, set())
    assert {key.split(":")[0] for key in straight} == expected
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
