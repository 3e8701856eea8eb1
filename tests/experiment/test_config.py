"""Experiment files: precedence of profile / file / --set, and how each part is built."""

import textwrap

import pytest

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
