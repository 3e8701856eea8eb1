"""A user's own experiment through the CLI: their environment module beside their YAML,
trained with LoRA and a warm-start from another directory, evaluated, resumed longer."""

import json
import re
import shutil
import sys
import textwrap
import uuid

import pytest
import torch

from turnrl.cli.main import main
from turnrl.training.checkpoint import latest_checkpoint

GAME = """
import re

import turnrl
from turnrl.types import Scenario, user


class GuessGame(turnrl.Environment):
    def __init__(self, scenarios):
        self.scenarios = scenarios
        self.secret = 0

    async def reset(self, *, seed=None, options=None):
        self.secret = options["scenario"].data["secret"]
        return [user("Guess a number from 1 to 9.")], {}

    async def step(self, message):
        match = re.search(r"\\d", message.content)
        found = match is not None and int(match.group()) == self.secret
        return turnrl.StepResult([] if found else [user("No.")], float(found), found, False, {})


def says_a_digit(trajectory):
    return float(any(c.isdigit() for c in trajectory.turns[-1].message.content))
"""

SCENARIOS = """
from turnrl.types import Scenario


def make(n):
    return [Scenario(id=f"s{i}", data={"secret": i % 9 + 1}) for i in range(n)]
"""

EXPERIMENT = """
profile: balanced
environment: {{target: "{game}:GuessGame"}}
scenarios:
  train: {{target: "data/{game}_scenarios.py:make", args: {{n: 10}}}}
  eval_size: 2
rewards:
  - {{target: "{game}:says_a_digit", weight: 0.2}}
warmstart:
  demonstrations: demos.jsonl
  steps: 2
  batch_size: 2
model: {{lora: {{r: 4, alpha: 8}}}}
generation: {{max_new_tokens: 3}}
rollout: {{scenarios_per_step: 2, num_generations: 2, max_turns: 2}}
optim: {{lr: 1.0e-3, warmup_steps: 0}}
eval: {{num_generations: 1}}
run: {{max_steps: 2, checkpoint_every: 2}}
"""


@pytest.fixture(scope="module")
def user_project(tmp_path_factory):
    """``(experiment file, module name, working directory elsewhere)``.

    The module name is new to this process, and dropped from ``sys.modules``
    after the tests, so each import here really searches for it.
    """
    root = tmp_path_factory.mktemp("project")
    game = f"guess_game_{uuid.uuid4().hex[:8]}"
    (root / f"{game}.py").write_text(GAME)
    (root / "data").mkdir()
    (root / "data" / f"{game}_scenarios.py").write_text(SCENARIOS)
    demo = {
        "messages": [{"role": "user", "content": "Guess."}, {"role": "assistant", "content": "5"}]
    }
    (root / "demos.jsonl").write_text(json.dumps(demo) + "\n")
    experiment = root / "guess.yaml"
    experiment.write_text(textwrap.dedent(EXPERIMENT.format(game=game)))
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    yield experiment, game, elsewhere
    forget(game)


def forget(game):
    """Drop the user's modules, as a new process would not have them."""
    for name in [m for m in sys.modules if game in m]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def user_run(user_project):
    """``turnrl train`` of the user's experiment from another directory: ``(run, stdout+err)``."""
    experiment, game, elsewhere = user_project
    run = elsewhere / "run"
    mp = pytest.MonkeyPatch()
    mp.chdir(elsewhere)
    try:
        code = main(["train", str(experiment), "--set", f"run.output_dir={run}"])
    finally:
        mp.undo()
    assert code == 0
    forget(game)
    return run


def test_train_imports_the_users_modules_beside_the_experiment_file(user_project, user_run):
    experiment, game, _ = user_project
    config = json.loads((user_run / "config.json").read_text())
    assert config["base_dir"] == str(experiment.parent.resolve())
    assert config["environment"]["target"] == f"{game}:GuessGame"
    assert (user_run / "final" / "adapter_config.json").is_file()  # a LoRA run
    assert latest_checkpoint(user_run) is not None
    records = [json.loads(line) for line in (user_run / "metrics.jsonl").read_text().splitlines()]
    assert "reward/says_a_digit_mean" in records[-1]  # the reward from the same module


def test_eval_of_a_lora_final_model_and_checkpoint_builds_no_optimizer(
    user_project, user_run, monkeypatch, tmp_path, capsys
):
    _, game, _ = user_project

    def no_optimizer(*args, **kwargs):
        raise AssertionError("evaluation built an optimizer")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", no_optimizer)
    monkeypatch.chdir(tmp_path)  # neither the experiment's directory nor the run's
    forget(game)
    assert main(["eval", str(user_run), "--output", str(tmp_path / "final")]) == 0
    results = json.loads((tmp_path / "final" / "eval_results.json").read_text())
    assert results["model"] == str(user_run / "final") and results["scenarios"] == 2
    assert 0.0 <= results["eval/reward_mean"] <= 1.2
    assert main(["eval", str(user_run / "final"), "--output", str(tmp_path / "again")]) == 0
    samples = (tmp_path / "final" / "eval_samples.jsonl").read_text()
    assert (tmp_path / "again" / "eval_samples.jsonl").read_text() == samples  # seeded
    checkpoint = latest_checkpoint(user_run)
    assert main(["eval", str(checkpoint), "--greedy", "--output", str(tmp_path / "ckpt")]) == 0
    samples = (tmp_path / "ckpt" / "eval_samples.jsonl").read_text().splitlines()
    assert len(samples) == 2  # greedy: one episode per held-out scenario
    assert "error:" not in capsys.readouterr().err


def test_resume_with_a_raised_max_steps_extends_the_finished_run_and_says_so(
    user_project, user_run, tmp_path, monkeypatch, capsys
):
    experiment, game, _ = user_project
    run = tmp_path / "run"
    shutil.copytree(user_run, run)  # the other tests keep the original
    monkeypatch.chdir(tmp_path)
    forget(game)
    capsys.readouterr()
    args = ["train", str(experiment), "--set", f"run.output_dir={run}", "--resume"]
    assert main([*args, "--set", "run.max_steps=3"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"max_steps_changed.*continues from step 2 to step 3", err)
    assert re.search(r"new=3.*old=2", err)
    assert "warm-start time" not in out  # a resumed run never warm-starts again
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert main([*args, "--set", "run.max_steps=2"]) == 0
    assert re.search(
        r"max_steps_changed.*nothing to train.*checkpoint is at step 3", capsys.readouterr().err
    )


def test_wall_times_are_labelled_and_agree_with_the_log(
    user_project, tmp_path, monkeypatch, capsys
):
    experiment, game, _ = user_project
    monkeypatch.chdir(tmp_path)
    forget(game)
    args = ["train", str(experiment), "--set", f"run.output_dir={tmp_path / 'run'}"]
    assert main([*args, "--set", "run.max_steps=1", "--set", "model.lora=null"]) == 0
    out, err = capsys.readouterr()
    warm = float(re.search(r"warmstart_done .*wall_s=([\d.]+)", err).group(1))
    rl = float(re.search(r"train_done .*wall_s=([\d.]+)", err).group(1))
    printed = {
        label: int(value)
        for label, value in re.findall(
            r"^  (warm-start time|RL time \(with evals\)|total wall time)\s*: (\d+) s", out, re.M
        )
    }
    assert printed["warm-start time"] == round(warm)
    assert printed["RL time (with evals)"] == round(rl)
    assert printed["total wall time"] >= round(warm + rl) - 1


def test_warmstart_steps_zero_turns_the_warmstart_off(user_project, tmp_path, monkeypatch, capsys):
    experiment, game, _ = user_project
    monkeypatch.chdir(tmp_path)
    forget(game)
    args = ["train", str(experiment), "--dry-run", "--set", f"run.output_dir={tmp_path / 'never'}"]
    assert main([*args, "--set", "warmstart.steps=0"]) == 0
    assert re.search(r"warm-start\s+none", capsys.readouterr().out)
    assert main([*args, "--set", "warmstart.steps=-1"]) == 2
    err = capsys.readouterr().err
    assert "invalid --set warmstart.steps=-1" in err and "guess.yaml" not in err
