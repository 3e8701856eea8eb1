"""turnrl.cli.demo: the demo is demo.yaml (examples/configs/arithmetic.yaml) with its departures."""

from pathlib import Path

import pytest

from turnrl.cli.demo import DEMO_FILE, demo_config, demo_experiment, demo_scenarios
from turnrl.environments.tasks import make_scenarios
from turnrl.experiment.config import load_experiment
from turnrl.training.config import TrainingConfig

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_file_is_the_demo_file():
    assert (ROOT / "examples/configs/arithmetic.yaml").resolve() == DEMO_FILE.resolve()


@pytest.mark.parametrize("seed", [0, 3])
def test_held_out_questions_are_the_first_hundred_of_the_seeded_shuffle(seed):
    questions = make_scenarios(low=0, high=99, b_range=(0, 9), ops=("+",), seed=seed)
    held_out, train = demo_scenarios(seed)
    assert held_out == questions[:100] and train == questions[100:]


def test_training_settings_are_the_files_with_the_run_of_the_command_line(tmp_path):
    file = load_experiment(DEMO_FILE).training_config().model_dump()
    config = demo_config(tmp_path, rl_steps=7, seed=5)
    assert isinstance(config, TrainingConfig)
    got = config.model_dump()
    assert got["run"] | {"output_dir": "", "max_steps": 0, "seed": 0, "checkpoint_every": 0} == (
        file["run"] | {"output_dir": "", "max_steps": 0, "seed": 0, "checkpoint_every": 0}
    )
    assert (got["run"]["output_dir"], got["run"]["max_steps"], got["run"]["seed"]) == (
        str(tmp_path),
        7,
        5,
    )
    assert got["run"]["checkpoint_every"] == 0  # a departure: the demo keeps no checkpoints
    assert {k: v for k, v in got.items() if k != "run"} == {
        k: v for k, v in file.items() if k != "run"
    }


def test_lengths_default_to_the_files_and_zero_warmstart_steps_mean_none():
    file = load_experiment(DEMO_FILE)
    config = demo_experiment(seed=2)
    assert config.run.max_steps == file.run.max_steps
    assert config.warmstart.steps == file.warmstart.steps
    assert config.warmstart.demonstrations.args["seed"] == 2
    assert demo_experiment(warmstart_steps=0).warmstart is None
    assert demo_experiment(warmstart_steps=5, rl_steps=4).warmstart.steps == 5
