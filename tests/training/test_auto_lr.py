"""optim.lr: auto: the rule, its resolution in the Trainer, what the run records, resume."""

import json
import re
from pathlib import Path

import pytest
import structlog

from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.experiment import ExperimentConfig, load_experiment
from turnrl.training.auto_lr import auto_lr, model_size, resolve_lr
from turnrl.training.config import TrainingConfig
from turnrl.training.errors import ResumeConfigError
from turnrl.training.optim import make_optimization
from turnrl.training.trainer import Trainer

TINY = 3_436_544  # parameters of the embedded model
DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_rule_at_its_anchors_and_between():
    assert auto_lr(TINY) == 2e-4  # at or below 5M: the demo's lr
    assert auto_lr(10**9) == auto_lr(7 * 10**9) == 1e-6  # at or above 500M: the old balanced lr
    # 5e7 lies halfway between 5e6 and 5e8 on a log scale, so its lr is the geometric
    # mean of the anchors' lrs: sqrt(2e-4 * 1e-6) = sqrt(2e-10) = 1.41421e-5 -> 1.41e-5.
    assert auto_lr(5 * 10**7) == 1.41e-5
    # The profile's scale and LoRA's x10 multiply: 3 * 10 * 1e-6 = 3e-5.
    assert auto_lr(10**9, lora=True, scale=3.0) == 3e-5
    assert auto_lr(TINY, scale=0.5) == 1e-4 and auto_lr(TINY, lora=True) == 2e-3
    with pytest.raises(ValueError, match="num_params >= 1"):
        auto_lr(0)


def test_the_docs_table_is_the_rule():
    text = DOCS.read_text()
    table = text[text.index("| parameters | conservative") :].split("\n\n")[0].splitlines()[2:]
    sizes = {"3.4M (the embedded model)": TINY, "500M and more": 5 * 10**8}
    assert len(table) == 6
    for line in table:
        name, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        n = sizes.get(name) or int(float(re.sub("M$", "", name)) * 1e6)
        expected = [auto_lr(n, scale=s) for s in (0.5, 1.0)] + [auto_lr(n, lora=True)]
        assert [float(c) for c in cells] == expected, line


def test_profiles_and_the_default_are_auto():
    for name, scale in (("conservative", 0.5), ("balanced", 1.0), ("aggressive", 1.0)):
        optim = TrainingConfig.from_profile(name).optim
        assert (optim.lr, optim.auto_lr_scale) == ("auto", scale)
    assert TrainingConfig().optim.lr == "auto"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", "expected a positive number or 'auto'"),
        (-1, "greater than 0"),
        (0, "greater than 0"),
        (float("inf"), "finite"),
        (True, "boolean"),
    ],
)
def test_a_bad_lr_gets_one_message_naming_the_field(value, message):
    with pytest.raises(ValueError, match=rf"optim\.lr: .*{message}") as caught:
        TrainingConfig.validate_data({"optim": {"lr": value}})
    assert str(caught.value).count("optim.lr") == 1  # not one line per union member


def test_auto_and_numbers_round_trip_through_yaml(tmp_path):
    assert TrainingConfig.validate_data({"optim": {"lr": "3e-4"}}).optim.lr == 3e-4
    config = TrainingConfig.from_profile("aggressive")
    config.to_yaml(tmp_path / "training.yaml")
    assert "lr: auto" in (tmp_path / "training.yaml").read_text()
    assert TrainingConfig.load(tmp_path / "training.yaml") == config
    experiment = ExperimentConfig.from_profile(
        "conservative", environment={"target": "turnrl.environments.tasks:ArithmeticEnvironment"}
    )
    experiment.to_yaml(tmp_path / "experiment.yaml")
    loaded = load_experiment(tmp_path / "experiment.yaml")
    assert loaded.optim.lr == "auto" and loaded.optim.auto_lr_scale == 0.5
    assert loaded.model_dump(exclude={"base_dir"}) == experiment.model_dump(exclude={"base_dir"})


def test_model_size_leaves_out_lora_adapters(tiny_agent):
    peft = pytest.importorskip("peft")
    assert model_size(tiny_agent.model) == TINY
    wrapped = peft.get_peft_model(
        tiny_agent.model, peft.LoraConfig(r=4, target_modules="all-linear")
    )
    assert sum(p.numel() for p in wrapped.parameters()) > TINY
    assert model_size(wrapped) == TINY
    # An adapter already on the model means LoRA even when the config does not say so.
    assert resolve_lr(TrainingConfig(), wrapped).optim.lr == 2e-3


def test_make_optimization_refuses_an_unresolved_lr(tiny_agent):
    with pytest.raises(ValueError, match="resolve_lr"):
        make_optimization(tiny_agent.model, TrainingConfig())


def config(run_dir, profile="balanced", **sections):
    return TrainingConfig.from_profile(
        profile,
        generation={"max_new_tokens": 3},
        rollout={"scenarios_per_step": 2, "num_generations": 2},
        run={"output_dir": str(run_dir), "max_steps": 1, "plot": False, **sections.pop("run", {})},
        **sections,
    )


def env():
    return ArithmeticEnvironment(make_scenarios(n=4))


@pytest.mark.parametrize(("profile", "lr"), [("balanced", 2e-4), ("conservative", 1e-4)])
def test_the_trainer_resolves_logs_and_records_the_lr(tiny_agent, tmp_path, profile, lr):
    with structlog.testing.capture_logs() as logs:
        trainer = Trainer(tiny_agent, env(), None, config(tmp_path, profile))
    trainer.close()
    assert trainer.config.optim.lr == lr
    assert trainer.optim.optimizer.param_groups[0]["initial_lr"] == lr
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == lr
    resolved = [e for e in logs if e["event"] == "lr_resolved"]
    assert len(resolved) == 1 and (resolved[0]["lr"], resolved[0]["parameters"]) == (lr, TINY)


def test_an_explicit_lr_wins(tiny_agent, tmp_path):
    with structlog.testing.capture_logs() as logs:
        trainer = Trainer(tiny_agent, env(), None, config(tmp_path, optim={"lr": 3e-3}))
    trainer.close()
    assert trainer.config.optim.lr == 3e-3
    assert not [e for e in logs if e["event"] == "lr_resolved"]


def test_lora_takes_ten_times_the_lr_of_the_base_models_size(tiny_agent, tmp_path):
    pytest.importorskip("peft")
    lora = {"lora": {"r": 4, "alpha": 8}}
    trainer = Trainer(tiny_agent, env(), None, config(tmp_path, model=lora))
    trainer.close()
    assert trainer.config.optim.lr == 2e-3


@pytest.mark.anyio
async def test_resume_compares_the_resolved_lr(tiny_path, tmp_path):
    from turnrl.agents.transformers import TransformersAgent

    def trainer(profile="balanced", optim=None, **run):
        agent = TransformersAgent.from_pretrained(tiny_path)
        run = {"checkpoint_every": 1, **run}
        optim = optim or {}
        return Trainer(
            agent, env(), None, config(tmp_path, profile, run=run, optim=optim), resume=True
        )

    first = Trainer(
        TransformersAgent.from_pretrained(tiny_path),
        env(),
        None,
        config(tmp_path, run={"checkpoint_every": 1}),
    )
    await first.train()
    # The same auto config resolves to the number the checkpoint recorded: an exact resume.
    again = trainer(max_steps=2)
    again.close()
    assert again.config.optim.lr == 2e-4
    # Written as the number it resolved to, it is the same config.
    trainer(optim={"lr": 2e-4}, max_steps=2).close()
    # Another profile is another lr: refused, naming the resolved numbers.
    with pytest.raises(ResumeConfigError, match=r"optim\.lr: 0\.0002 -> 0\.0001"):
        trainer("conservative", max_steps=2)
    # auto_lr_scale acts only through the lr: with the lr written out it changes nothing.
    trainer(optim={"lr": 2e-4, "auto_lr_scale": 3.0}, max_steps=2).close()
