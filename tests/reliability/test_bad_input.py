"""Bad input is refused before any work is done, with an error that names the problem."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from turnrl.agents.transformers import ChatTemplateError, TransformersAgent
from turnrl.environments.base import Environment, StepResult
from turnrl.environments.checker import EnvContractError, check_env
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"optim": {"lr": -1}}, r"optim\.lr"),
        ({"optim": {"lr": "fast"}}, r"optim\.lr"),
        ({"rollout": {"num_generations": 1}}, "needs num_generations >= 2"),
        ({"algorithm": {"estimator": "ppo9"}}, r"algorithm\.estimator.*unknown estimator 'ppo9'"),
        ({"algorithm": {"clip_eps_low": -0.1}}, r"algorithm\.clip_eps_low"),
        ({"rollout": {"max_failed_frac": 2}}, r"rollout\.max_failed_frac"),
        ({"run": {"checkpoint_every": -1}}, r"run\.checkpoint_every"),
        ({"optim": {"learning_rate": 1e-3}}, r"optim\.learning_rate.*[Ee]xtra"),
    ],
)
def test_bad_config_values_name_the_field(overrides, named):
    with pytest.raises(ValueError, match=named):
        TrainingConfig.from_profile("balanced", **overrides)


def test_empty_scenarios_missing_model_and_template(tiny_agent, tiny_path, tmp_path):
    config = TrainingConfig.from_profile("balanced", run={"output_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="no training scenarios"):
        Trainer(tiny_agent, ArithmeticEnvironment([]), None, config)
    assert not (tmp_path / "run").exists()  # refused before writing anything
    with pytest.raises(FileNotFoundError, match=r"no model at .*nowhere"):
        TransformersAgent.from_pretrained(tmp_path / "nowhere")
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    tokenizer.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        TransformersAgent(AutoModelForCausalLM.from_pretrained(tiny_path), tokenizer)


class NoTuple(Environment):
    scenarios = make_scenarios(n=1)

    async def reset(self, *, seed=None, options=None):
        return "not a list of messages"  # breaks the contract: (observation, info) expected

    async def step(self, message):
        return StepResult([], 0.0, True, False, {})


@pytest.mark.anyio
async def test_an_environment_breaking_the_contract_is_explained():
    with pytest.raises(EnvContractError, match="reset"):
        await check_env(NoTuple())


def test_max_new_tokens_beyond_the_context_is_refused_at_start(tiny_agent, tmp_path):
    config = TrainingConfig.from_profile(
        "balanced",
        generation={"max_new_tokens": 1024},  # the tiny model's whole context
        run={"output_dir": str(tmp_path / "run")},
    )
    env = ArithmeticEnvironment(make_scenarios(n=2))
    with pytest.raises(ValueError, match=r"max_new_tokens=1024 does not fit .* context of 1024"):
        Trainer(tiny_agent, env, None, config)
    assert not (tmp_path / "run").exists()
