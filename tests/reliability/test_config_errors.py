"""Bad settings fail when the config is read, with the field, key or file named.

Each case here was accepted before: ``optim.lr=inf`` trained to NaN, ``temperature=inf``
sampled uniformly, ``run.max_steps=true`` ran one step, a repeated YAML key silently
kept its last value, ``estimator: builtins:print`` printed the config and failed at the
first update, and a model folder without weights failed deep inside transformers.
"""

import shutil
import textwrap
import typing

import pytest

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import ModelLoadError, TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.experiment.build import build_experiment
from turnrl.experiment.config import (
    ObjectSpec,
    RewardSpec,
    ScenarioSpec,
    WarmstartSpec,
    load_experiment,
)
from turnrl.training.config import TrainingConfig
from turnrl.training.config_files import parse_yaml
from turnrl.training.trainer import Trainer

ENV = "environment: {target: 'turnrl.environments.tasks:ArithmeticEnvironment'}\n"


def experiment_file(tmp_path, body: str, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(ENV + textwrap.dedent(body))
    return path


# --- inf, nan and booleans in numeric fields -------------------------------------------


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("optim.lr=inf", r"optim\.lr: Input should be a finite number"),
        ("optim.lr=.inf", r"optim\.lr: Input should be a finite number"),
        ("generation.temperature=inf", r"generation\.temperature: .*finite"),
        ("eval.temperature=.inf", r"eval\.temperature: .*finite"),
        ("algorithm.beta=.nan", r"algorithm\.beta: .*finite"),
        ("rollout.env_timeout_s=.inf", r"rollout\.env_timeout_s: .*finite"),
        ("run.max_steps=true", r"run\.max_steps: a boolean is not a number"),
        ("rollout.num_generations=true", r"rollout\.num_generations: a boolean"),
        ("optim.max_grad_norm=false", r"optim\.max_grad_norm: a boolean"),
        ("optim.adam_betas=[true, 0.9]", r"optim\.adam_betas: a boolean"),
        ("optim.adam_betas=[0.9, 1.0]", r"optim\.adam_betas: each AdamW beta must be in"),
        ("rewards=[{target: 'turnrl.rewards:exact_match', weight: .nan}]", r"rewards\.0\.weight"),
        ("scenarios={train: x.jsonl, eval_size: true}", r"scenarios\.eval_size: a boolean"),
    ],
)
def test_non_finite_and_boolean_numbers_are_refused(tmp_path, setting, named):
    path = experiment_file(tmp_path, "")
    with pytest.raises(ValueError, match=named):
        load_experiment(path, overrides=[setting])


def test_the_same_values_in_a_file_are_refused(tmp_path):
    path = experiment_file(tmp_path, "optim: {lr: .inf}\nrun: {max_steps: true}\n")
    with pytest.raises(ValueError, match=r"(?s)exp\.yaml.*optim\.lr.*run\.max_steps"):
        load_experiment(path)


def _numeric_fields(model: type) -> list[str]:
    """Dotted names of the int and float fields of a pydantic model, sections included."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = typing.get_args(annotation)
        section = next((a for a in (annotation, *args) if hasattr(a, "model_fields")), None)
        if section is not None:
            out += [f"{name}.{sub}" for sub in _numeric_fields(section)]
        elif {int, float} & {annotation, *args} or "tuple[float" in str(annotation):
            out.append(name)
    return out


SECTIONS = [name for name in _numeric_fields(TrainingConfig) if not name.startswith("model.lora")]


def test_the_sweep_covers_every_section():
    assert {n.split(".")[0] for n in SECTIONS} == {
        "generation",
        "rollout",
        "algorithm",
        "optim",
        "eval",
        "run",
        "mismatch",
    }
    assert len(SECTIONS) > 30


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), True, False])
def test_every_numeric_training_field_refuses_non_finite_and_booleans(bad):
    for dotted in SECTIONS:
        section, field = dotted.split(".")
        value = [bad, 0.9] if field == "adam_betas" else bad
        with pytest.raises(ValueError, match=rf"{section}\.{field}"):
            TrainingConfig.from_profile("balanced", **{section: {field: value}})


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), True])
@pytest.mark.parametrize(
    ("spec", "base", "field"),
    [
        (RewardSpec, {"target": "a:b"}, "weight"),
        (ScenarioSpec, {"train": "x.jsonl"}, "eval_fraction"),
        (ScenarioSpec, {"train": "x.jsonl"}, "eval_size"),
        (ScenarioSpec, {"train": "x.jsonl"}, "split_seed"),
        (WarmstartSpec, {"demonstrations": "d.jsonl"}, "steps"),
        (WarmstartSpec, {"demonstrations": "d.jsonl"}, "lr"),
        (WarmstartSpec, {"demonstrations": "d.jsonl"}, "batch_size"),
    ],
)
def test_experiment_sections_refuse_non_finite_and_booleans(spec, base, field, bad):
    with pytest.raises(ValueError, match=field):
        spec.model_validate({**base, field: bad})


def test_booleans_stay_booleans_and_numbers_stay_numbers():
    config = TrainingConfig.from_profile(
        "balanced", run={"plot": False, "max_steps": 3}, optim={"lr": "3e-4"}
    )
    assert config.run.plot is False and config.run.max_steps == 3 and config.optim.lr == 3e-4
    assert ObjectSpec.model_validate({"target": "a:b", "args": {"flag": True}}).args == {
        "flag": True
    }


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"temperature": float("inf")}, "temperature must be a finite number"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"max_new_tokens": True}, "max_new_tokens must be an integer"),
        ({"top_p": True}, "top_p must be a number"),
    ],
)
def test_sampling_params_refuse_non_finite_and_booleans(kwargs, named):
    with pytest.raises(ValueError, match=named):
        SamplingParams(**kwargs)


# --- repeated keys ----------------------------------------------------------------------


def test_a_repeated_yaml_key_is_named_with_its_lines(tmp_path):
    path = experiment_file(
        tmp_path,
        """
        optim:
          lr: 1.0e-4
          warmup_steps: 2
          lr: 3.0e-4
        """,
    )
    with pytest.raises(
        ValueError, match=r"exp\.yaml:6: duplicate key 'lr' \(first given on line 4"
    ):
        load_experiment(path)
    alone = tmp_path / "training.yaml"
    alone.write_text("optim:\n  lr: 1.0e-4\n  lr: 3.0e-4\n")
    with pytest.raises(ValueError, match=r"training\.yaml:3: duplicate key 'lr'"):
        TrainingConfig.load(alone)


def test_a_repeated_top_level_section_is_named(tmp_path):
    path = experiment_file(tmp_path, "run: {max_steps: 5}\nrun: {seed: 1}\n")
    with pytest.raises(ValueError, match=r"exp\.yaml:3: duplicate key 'run'"):
        load_experiment(path)


def test_a_repeated_json_key_is_named(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(
        '{"environment": {"target": "turnrl.environments.tasks:ArithmeticEnvironment"},\n'
        ' "optim": {"lr": 0.001, "lr": 0.1}}'
    )
    with pytest.raises(ValueError, match=r"exp\.json: duplicate key 'lr'"):
        load_experiment(path)
    with pytest.raises(ValueError, match=r"exp\.json: duplicate key 'lr'"):
        TrainingConfig.load(path)


def test_yaml_merge_keys_may_be_overridden():
    text = "base: &b {lr: 1.0e-4, warmup_steps: 2}\noptim:\n  <<: *b\n  lr: 3.0e-4\n"
    assert parse_yaml(text, "x.yaml")["optim"] == {"lr": 3e-4, "warmup_steps": 2}


def test_a_key_set_twice_on_the_command_line_is_named(tmp_path):
    path = experiment_file(tmp_path, "")
    with pytest.raises(ValueError, match=r"--set optim\.lr is given twice"):
        load_experiment(path, overrides=["optim.lr=1e-4", "optim.lr=3e-4"])
    with pytest.raises(ValueError, match="duplicate key 'lr'"):
        load_experiment(path, overrides=["optim={lr: 1e-4, lr: 3e-4}"])
    config = load_experiment(path, overrides=["optim.lr=1e-4", "optim.warmup_steps=3"])
    assert config.optim.lr == 1e-4 and config.optim.warmup_steps == 3


# --- the estimator's import path ---------------------------------------------------------


def not_an_estimator(config):
    return 42


def failing_factory(config):
    raise RuntimeError("needs a critic")


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("builtins:print", "'builtins:print' is a built-in function, not an estimator factory"),
        ("builtins:dict", "returned dict .*not an estimator"),
        (f"{__name__}:not_an_estimator", "returned int 42, not an estimator"),
        (f"{__name__}:failing_factory", "raised RuntimeError: needs a critic"),
        ("turnrl.training.advantages:nope", "cannot import 'nope'"),
        ("no_such_module_xyz:factory", "no module named 'no_such_module_xyz' on the Python"),
    ],
)
def test_an_estimator_path_must_give_an_estimator(tmp_path, target, named):
    path = experiment_file(tmp_path, f"algorithm: {{estimator: '{target}'}}\n")
    with pytest.raises(ValueError, match=rf"(?s)exp\.yaml.*algorithm\.estimator: .*{named}"):
        load_experiment(path)
    alone = tmp_path / "training.yaml"
    alone.write_text(f"algorithm: {{estimator: '{target}'}}\n")
    with pytest.raises(ValueError, match=rf"(?s)training\.yaml.*algorithm\.estimator: .*{named}"):
        TrainingConfig.load(alone)


def test_a_working_estimator_path_is_accepted(tmp_path):
    path = experiment_file(
        tmp_path, "algorithm: {estimator: 'turnrl.training.advantages:make_rloo'}\n"
    )
    assert load_experiment(path).algorithm.estimator == "turnrl.training.advantages:make_rloo"


def test_the_trainer_refuses_a_bad_estimator_before_any_work(tiny_agent, tmp_path):
    config = TrainingConfig.from_profile(
        "balanced",
        algorithm={"estimator": "builtins:print"},
        run={"output_dir": str(tmp_path / "run")},
    )
    with pytest.raises(ValueError, match="built-in function, not an estimator factory"):
        Trainer(tiny_agent, ArithmeticEnvironment(make_scenarios(n=4)), None, config)


# --- a model folder without weights ------------------------------------------------------


@pytest.fixture
def model_copy(tiny_path, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_path, path)
    return path


def test_a_model_folder_without_weights_is_named(model_copy, tmp_path):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no weights in .*model'.*model\.safetensors"):
        TransformersAgent.from_pretrained(model_copy)
    path = experiment_file(tmp_path, f"model: {{path: '{model_copy}'}}\n")
    with pytest.raises(ModelLoadError, match="no weights in"):
        build_experiment(load_experiment(path))


def test_corrupt_weights_and_a_missing_tokenizer_are_named(model_copy):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    with pytest.raises(ModelLoadError, match=r"cannot load the model in .*weight files"):
        TransformersAgent.from_pretrained(model_copy)
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="cannot load the tokenizer of"):
        TransformersAgent.from_pretrained(model_copy)
