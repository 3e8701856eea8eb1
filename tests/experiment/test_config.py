"""Experiment files: precedence of profile / file / --set, and how each part is built."""

import json
import sys
import textwrap
import uuid

import anyio
import pytest

from turnrl.cli.train import dry_run
from turnrl.environments.tasks import ArithmeticEnvironment
from turnrl.experiment.build import build_experiment
from turnrl.experiment.config import ExperimentConfig, load_experiment
from turnrl.rewards.base import RewardFunction
from turnrl.types import Scenario

ENV = {"target": "turnrl.environments.tasks:ArithmeticEnvironment"}
SCENARIOS = {
    "train": {
        "target": "turnrl.environments.tasks:make_scenarios",
        "args": {"high": 4, "seed": 1},
    },
    "eval_size": 5,
}


def test_precedence_profile_then_file_then_set(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        textwrap.dedent(
            """
            profile: conservative
            environment: {target: "turnrl.environments.tasks:ArithmeticEnvironment"}
            optim: {lr: 1.0e-4}
            algorithm: {beta: 0.5}
            """
        )
    )
    config = load_experiment(path)
    assert config.profile == "conservative"
    assert config.optim.max_grad_norm == 0.5  # from the profile
    assert config.optim.lr == 1e-4 and config.algorithm.beta == 0.5  # the file wins
    config = load_experiment(path, profile="aggressive", overrides=["algorithm.beta=0.2"])
    assert config.profile == "aggressive"
    assert config.rollout.num_generations == 16  # aggressive's
    assert config.algorithm.beta == 0.2  # --set wins over the file
    assert load_experiment(path, overrides=["optim.lr=3e-4"]).optim.lr == 3e-4  # a float
    assert ExperimentConfig.load(path) == load_experiment(path)  # not TrainingConfig.load's


def test_errors_name_the_field_and_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("environment: {target: 'a:b'}\noptim: {lr: 0}\n")
    with pytest.raises(ValueError, match=r"exp.yaml(.|\n)*optim.lr"):
        load_experiment(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="mapping"):
        load_experiment(path)
    path.write_text("environment: {target: 'a:b'}\nprofile: wild\n")
    with pytest.raises(ValueError, match="unknown profile 'wild'"):
        load_experiment(path)
    with pytest.raises(ValueError, match="environment"):
        load_experiment(data={"optim": {"lr": 1e-4}})


def test_build_from_a_factory_with_a_held_out_split(tiny_agent):
    config = load_experiment(data={"environment": ENV, "scenarios": SCENARIOS})
    experiment = build_experiment(config, agent=tiny_agent)
    assert isinstance(experiment.env, ArithmeticEnvironment)
    assert len(experiment.train_scenarios) == 20 and len(experiment.eval_scenarios) == 5
    assert list(experiment.env.scenarios) == experiment.train_scenarios
    held_out = {s.id for s in experiment.eval_scenarios}
    assert not held_out & {s.id for s in experiment.train_scenarios}


def test_without_a_scenarios_section_the_environment_keeps_its_own(
    tiny_agent, tmp_path, monkeypatch
):
    (tmp_path / "my_envs.py").write_text(
        textwrap.dedent(
            """
            from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios

            def small(n):
                return ArithmeticEnvironment(make_scenarios(n=n))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {"target": "my_envs:small", "args": {"n": 3}}
    experiment = build_experiment(load_experiment(data={"environment": env}), agent=tiny_agent)
    assert len(experiment.train_scenarios) == 3
    assert experiment.train_scenarios == list(experiment.env.scenarios)
    assert experiment.eval_scenarios == []


def test_reward_entries_in_every_form(tiny_agent, tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            from turnrl.rewards import reward_function

            @reward_function
            def decorated(trajectory):
                return 1.0

            def plain(trajectory):
                return 0.5
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = [
        {"target": "my_rewards:decorated"},  # a reward function object: used as it is
        {"target": "my_rewards:plain", "weight": 0.5},  # (trajectory) -> float: lifted
        {"target": "turnrl.rewards:exact_match"},  # a factory without required args: called
        {"target": "turnrl.rewards:regex_format", "args": {"pattern": "\\d+"}, "weight": 0},
    ]
    config = load_experiment(data={"environment": ENV, "scenarios": SCENARIOS, "rewards": rewards})
    built = build_experiment(config, agent=tiny_agent).rewards
    assert all(isinstance(fn, RewardFunction) for fn in built)
    assert [fn.name for fn in built] == ["decorated", "plain", "exact_match", "format"]
    assert list(built.values()) == [1.0, 0.5, 1.0, 0.0]
    bad = {"target": "my_rewards:decorated", "args": {"x": 1}}
    config = load_experiment(data={"environment": ENV, "scenarios": SCENARIOS, "rewards": [bad]})
    with pytest.raises(ValueError, match=r"rewards\[0\].*takes no args"):
        build_experiment(config, agent=tiny_agent)


def test_warmstart_from_a_jsonl_file_and_a_factory(tiny_agent, tmp_path):
    demos = tmp_path / "demos.jsonl"
    demos.write_text(
        '{"messages": [{"role": "user", "content": "What is 1+1?"}, '
        '{"role": "assistant", "content": "2"}]}\n\n'
    )
    data = {"environment": ENV, "scenarios": SCENARIOS}
    data["warmstart"] = {"demonstrations": str(demos), "steps": 2, "batch_size": 2}
    experiment = build_experiment(load_experiment(data=data), agent=tiny_agent)
    assert len(experiment.demonstrations) == 1
    assert len(experiment.warmstart()) == 2
    assert experiment.config.warmstart.max_grad_norm == 1.0
    for clip in (None, 0.5):
        data["warmstart"]["max_grad_norm"] = clip
        assert load_experiment(data=data).warmstart.max_grad_norm == clip
    data["warmstart"]["max_grad_norm"] = 0
    with pytest.raises(ValueError, match="max_grad_norm"):
        load_experiment(data=data)
    data["warmstart"] = {
        "demonstrations": {
            "target": "turnrl.environments.tasks:demonstrations",
            "args": {"retry_fraction": 1.0},
        }
    }
    experiment = build_experiment(load_experiment(data=data), agent=tiny_agent)
    assert len(experiment.demonstrations) == 20  # one per training scenario
    demos.write_text('{"text": "no messages"}\n')
    data["warmstart"] = {"demonstrations": str(demos)}
    with pytest.raises(ValueError, match=r"demos.jsonl:1"):
        build_experiment(load_experiment(data=data), agent=tiny_agent)


def test_scenarios_from_a_data_file(tiny_agent, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        "".join(
            Scenario(id=f"q{i}", data={"a": i, "op": "+", "b": 1, "answer": i + 1})
            .model_dump_json()
            .replace('"prompt":[],', "")
            + "\n"
            for i in range(10)
        )
    )
    data = {
        "environment": ENV,
        "scenarios": {"train": str(path), "eval_fraction": 0.2, "options": {"prompt_field": None}},
    }
    experiment = build_experiment(load_experiment(data=data), agent=tiny_agent)
    assert len(experiment.train_scenarios) == 8 and len(experiment.eval_scenarios) == 2
    assert (
        experiment.train_scenarios[0].data["answer"] == experiment.train_scenarios[0].data["a"] + 1
    )


def test_a_bad_value_is_blamed_on_the_set_that_gave_it(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("environment: {target: 'a:b'}\noptim: {lr: 0}\n")
    with pytest.raises(ValueError) as error:
        load_experiment(path, overrides=["optim.lr=1e-4", "run.max_steps=0"])
    assert str(error.value).startswith("invalid --set run.max_steps=0:\n  run.max_steps:")
    assert "exp.yaml" not in str(error.value)
    with pytest.raises(ValueError) as error:  # one bad value from each: each named
        load_experiment(path, overrides=["run.max_steps=0"])
    first, *lines = str(error.value).splitlines()
    assert first == f"invalid {path}:"
    assert [line.split(":")[0].strip() for line in lines] == ["optim.lr", "run.max_steps"]
    assert "from --set" not in lines[0] and lines[1].endswith("(from --set run.max_steps=0)")


def test_a_section_brought_in_by_set_is_blamed_on_it(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("environment: {target: 'a:b'}\n")
    with pytest.raises(ValueError, match=r"^invalid --set warmstart.steps=5:\n.*demonstrations"):
        load_experiment(path, overrides=["warmstart.steps=5"])


def test_warmstart_steps_zero_means_no_warmstart(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("environment: {target: 'a:b'}\nwarmstart: {demonstrations: d.jsonl}\n")
    assert load_experiment(path).warmstart.steps == 100
    assert load_experiment(path, overrides=["warmstart.steps=0"]).warmstart is None
    assert load_experiment(path, overrides=["warmstart=null"]).warmstart is None
    path.write_text("environment: {target: 'a:b'}\n")  # no section: nothing to turn off
    assert load_experiment(path, overrides=["warmstart.steps=0"]).warmstart is None
    with pytest.raises(ValueError, match=r"warmstart\.steps"):
        load_experiment(path, overrides=["warmstart={demonstrations: d.jsonl, steps: false}"])


def test_base_dir_is_the_experiment_files_directory(tmp_path, monkeypatch):
    path = tmp_path / "exp.yaml"
    path.write_text("environment: {target: 'a:b'}\n")
    monkeypatch.chdir("/")
    assert load_experiment(path).base_dir == str(tmp_path.resolve())
    path.write_text("environment: {target: 'a:b'}\nbase_dir: code\n")
    assert load_experiment(path).base_dir == str(tmp_path.resolve() / "code")
    assert load_experiment(data={"environment": ENV}).base_dir is None


def test_an_estimator_beside_the_experiment_file_builds_from_anywhere(
    tiny_agent, tmp_path, monkeypatch
):
    name = f"my_estimator_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from turnrl.training.advantages import make_rloo\n\n"
        "def make(config):\n    return make_rloo(config)\n"
    )
    path = tmp_path / "exp.json"
    data = {"environment": ENV, "scenarios": SCENARIOS, "algorithm": {"estimator": f"{name}:make"}}
    path.write_text(json.dumps({**data, "run": {"output_dir": str(tmp_path / "run")}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    try:
        experiment = build_experiment(load_experiment(path), agent=tiny_agent)
        sys.modules.pop(name)  # the Trainer imports it again, as a resumed run would
        trainer = experiment.trainer()
        trainer.close()
        assert trainer.estimator.__module__.startswith("turnrl.training")
        sys.modules.pop(name)
        assert anyio.run(dry_run, experiment)["trajectories"]  # `turnrl train --dry-run`
    finally:
        sys.modules.pop(name, None)


def test_a_run_recorded_without_base_dir_resumes_without_force(tmp_path):
    from turnrl.training import rundir

    path = tmp_path / "exp.yaml"
    path.write_text("environment: {target: 'a:b'}\n")
    config = load_experiment(path).model_dump(mode="json")
    older = {k: v for k, v in config.items() if k != "base_dir"}  # before base_dir existed
    changes = rundir.config_changes(older, config)
    assert list(changes) == ["base_dir"] and rundir.breaking(changes) == {}
