import json

import pytest

from turnrl.training.config import PROFILES, TrainingConfig


def test_profiles_differ_and_validate():
    configs = {name: TrainingConfig.from_profile(name) for name in PROFILES}
    # Every profile picks its lr from the model's size; conservative takes half of it,
    # aggressive balanced's (it pushes by holding less and sampling more, not by the lr).
    assert {config.optim.lr for config in configs.values()} == {"auto"}
    assert (
        configs["conservative"].optim.auto_lr_scale
        < configs["balanced"].optim.auto_lr_scale
        == configs["aggressive"].optim.auto_lr_scale
    )
    generations = {name: config.rollout.num_generations for name, config in configs.items()}
    assert generations["aggressive"] > generations["balanced"]
    assert configs["aggressive"].algorithm.beta == 0
    assert (
        configs["aggressive"].algorithm.clip_eps_high > configs["aggressive"].algorithm.clip_eps_low
    )


def test_overrides_nested_and_dunder():
    cfg = TrainingConfig.from_profile("balanced", optim={"lr": 3e-4}, rollout__num_generations=4)
    assert cfg.optim.lr == 3e-4
    assert cfg.optim.max_grad_norm == 1.0  # untouched sibling survives the merge
    assert cfg.rollout.num_generations == 4


def test_unknown_field_named():
    with pytest.raises(ValueError, match=r"optim\.learning_rate: Extra inputs"):
        TrainingConfig.from_profile("balanced", optim={"learning_rate": 1e-3})


def test_wrong_type_and_range_named():
    with pytest.raises(ValueError, match=r"optim\.lr: .*greater than 0"):
        TrainingConfig.from_profile("balanced", optim__lr=-1.0)
    with pytest.raises(ValueError, match=r"rollout\.scenarios_per_step"):
        TrainingConfig.from_profile("balanced", rollout__scenarios_per_step="many")
    with pytest.raises(ValueError, match=r"algorithm\.estimator"):
        TrainingConfig.from_profile("balanced", algorithm__estimator="ppo2")


def test_group_estimator_needs_two_generations():
    with pytest.raises(ValueError, match="num_generations >= 2"):
        TrainingConfig.from_profile("balanced", rollout__num_generations=1)


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'wild'"):
        TrainingConfig.from_profile("wild")


def test_assignment_is_validated():
    cfg = TrainingConfig()
    with pytest.raises(ValueError):
        cfg.optim.lr = 0


def test_yaml_and_json_loading(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("profile: aggressive\noptim:\n  lr: 0.001\nrun:\n  max_steps: 7\n")
    cfg = TrainingConfig.load(path)
    assert cfg.optim.lr == 0.001 and cfg.run.max_steps == 7
    assert cfg.algorithm.clip_eps_high == 0.28  # from the profile
    json_path = tmp_path / "run.json"
    cfg.save(json_path)
    assert TrainingConfig.load(json_path) == cfg
    assert json.loads(json_path.read_text())["run"]["max_steps"] == 7


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  max_steps: 0\n")
    with pytest.raises(ValueError, match=r"(?s)bad\.yaml.*run\.max_steps"):
        TrainingConfig.load(bad)
    with pytest.raises(FileNotFoundError):
        TrainingConfig.load(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        TrainingConfig.load(listy)


def test_every_field_is_described():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation)

    walk(TrainingConfig)


def test_estimator_settings_are_checked():
    with pytest.raises(ValueError, match="kl_penalty='reward' does not apply"):
        TrainingConfig.from_profile(
            "balanced", algorithm={"estimator": "gvpo", "kl_penalty": "reward"}
        )
    with pytest.raises(ValueError, match="gvpo' needs beta > 0"):
        TrainingConfig.from_profile("balanced", algorithm={"estimator": "gvpo", "beta": 0.0})
    with pytest.raises(ValueError, match=r"algorithm\.loss_aggregation"):
        TrainingConfig.from_profile("balanced", algorithm={"loss_aggregation": "seq_sum"})
    with pytest.raises(ValueError, match=r"algorithm\.kl_estimator"):
        TrainingConfig.from_profile("balanced", algorithm={"kl_estimator": "k4"})
    with pytest.raises(ValueError, match="needs num_generations >= 2"):
        TrainingConfig.from_profile(
            "balanced", algorithm={"estimator": "rloo"}, rollout={"num_generations": 1}
        )
    # GAE learns from single episodes: no group needed.
    cfg = TrainingConfig.from_profile(
        "balanced",
        algorithm={"estimator": "gae"},
        rollout={"num_generations": 1, "min_group_size": 1},
    )
    assert cfg.algorithm.estimator == "gae" and cfg.algorithm.uses_reference  # beta 0.04 > 0
    assert TrainingConfig.from_profile("balanced", algorithm={"estimator": "my.module:factory"})
    gvpo = TrainingConfig.from_profile("balanced", algorithm={"estimator": "gvpo"}).algorithm
    assert not gvpo.uses_reference  # pi_theta' is the behavior policy by default
    assert TrainingConfig.from_profile(
        "balanced", algorithm={"estimator": "gvpo", "gvpo_reference": "reference"}
    ).algorithm.uses_reference


def test_an_experiment_file_is_refused_with_the_loader_to_use(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text("environment: {target: 'turnrl.environments.tasks:ArithmeticEnvironment'}\n")
    with pytest.raises(ValueError, match=r"experiment\.yaml is an experiment file \(it has "):
        TrainingConfig.load(path)
    with pytest.raises(ValueError, match=r"turnrl\.load_experiment\(path\)"):
        TrainingConfig.load(path)


def test_to_yaml_loads_back_to_an_equal_config(tmp_path):
    config = TrainingConfig.from_profile("aggressive", optim={"lr": 3e-5}, model={"lora": {"r": 4}})
    text = config.to_yaml(tmp_path / "config.yaml")
    assert (tmp_path / "config.yaml").read_text() == text
    assert TrainingConfig.load(tmp_path / "config.yaml") == config
    assert "lr: 3.0e-05" in text  # a float YAML reads back as a float


def test_an_experiment_config_records_the_profile_it_starts_from():
    from turnrl.experiment.config import ExperimentConfig

    env = {"target": "turnrl.environments.tasks:ArithmeticEnvironment"}
    config = ExperimentConfig.from_profile("aggressive", environment=env)
    assert config.profile == "aggressive" and config.algorithm.beta == 0.0
