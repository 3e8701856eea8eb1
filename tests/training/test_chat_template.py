"""The chat template as configuration: checked at trainer start, its arguments from config,
and a template that fails inside an episode stops the run with its whole message."""

import json

import pytest

from turnrl.agents.templates import ChatTemplateError
from turnrl.agents.tiny import CHAT_TEMPLATE
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.config import TrainingConfig
from turnrl.training.errors import RolloutFailureError
from turnrl.training.groups import check_failures
from turnrl.training.rollout import collect
from turnrl.training.trainer import Trainer
from turnrl.types import Scenario, Trajectory, TrajectoryGroup, user


def config(tmp_path, **model):
    return TrainingConfig.from_profile(
        "balanced",
        model=model,
        rollout={"scenarios_per_step": 1, "num_generations": 2},
        generation={"max_new_tokens": 4},
        eval={"every": 0},
        run={"max_steps": 1, "output_dir": str(tmp_path / "run"), "save_final": False},
    )


def test_trainer_refuses_a_template_that_loses_replies_before_touching_files(tiny_agent, tmp_path):
    tiny_agent.tokenizer.chat_template = "{% for m in messages %}{{ m.text }}{% endfor %}"
    env = ArithmeticEnvironment(make_scenarios(n=2))
    with pytest.raises(ChatTemplateError, match=r"turn 2 \(assistant\).*render each message"):
        Trainer(tiny_agent, env, None, config(tmp_path))
    assert not (tmp_path / "run").exists()


def test_trainer_keeps_the_template_verdict(tiny_agent, tmp_path):
    env = ArithmeticEnvironment(make_scenarios(n=2))
    trainer = Trainer(tiny_agent, env, None, config(tmp_path))
    trainer.close()
    assert (trainer.template.mode, trainer.template.prefix_preserving) == ("prefix", True)


def test_template_arguments_from_config_reach_the_agent_and_config_json(tiny_agent, tmp_path):
    # A template argument that changes the generation prompt, as enable_thinking does.
    tiny_agent.tokenizer.chat_template = CHAT_TEMPLATE.replace(
        "{{ '<|assistant|>' }}", "{{ '<|assistant|>' }}{% if terse %}{{ 'OK' }}{% endif %}"
    )
    env = ArithmeticEnvironment(make_scenarios(n=2))
    trainer = Trainer(tiny_agent, env, None, config(tmp_path, chat_template_kwargs={"terse": True}))
    trainer.close()
    assert tiny_agent.chat_template_kwargs == {"terse": True}
    assert tiny_agent.render([user("hi")], add_generation_prompt=True).endswith("<|assistant|>OK")
    # The reply opened with 'OK' is rendered without it later: an honest step-wise verdict.
    assert trainer.template.mode == "step-wise"
    assert trainer.template.rewrites[0].diff == "removed 'OK'"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["chat_template_kwargs"] == {"terse": True}


def test_the_agents_own_template_arguments_are_recorded(tiny_path, tmp_path):
    agent = TransformersAgent.from_pretrained(tiny_path, chat_template_kwargs={"terse": True})
    trainer = Trainer(agent, ArithmeticEnvironment(make_scenarios(n=2)), None, config(tmp_path))
    trainer.close()
    assert trainer.config.model.chat_template_kwargs == {"terse": True}
    assert trainer.template.template_kwargs == {"terse": True}


@pytest.mark.anyio
async def test_a_template_failing_inside_an_episode_stops_the_rollout(tiny_agent):
    # Passes the probe, but raises on the environment's retry message.
    tiny_agent.tokenizer.chat_template = (
        "{% for m in messages %}{% if m.content == 'Wrong. Try again.' %}"
        "{{ raise_exception('retries are not supported') }}{% endif %}{% endfor %}" + CHAT_TEMPLATE
    )
    assert tiny_agent.check_template().usable
    env = ArithmeticEnvironment(make_scenarios(n=2))
    with pytest.raises(ChatTemplateError, match=r"scenario .*retries are not supported"):
        await collect(tiny_agent, env, env.scenarios, 4)


def test_the_failure_summary_keeps_whole_messages():
    scenario = Scenario(id="s")
    cause = "ValueError: the opening is fine, but " + "x" * 300 + " and here is the fix"
    failed = [Trajectory(scenario=scenario, error=cause) for _ in range(3)]
    group = TrajectoryGroup(scenario=scenario, trajectories=failed)
    with pytest.raises(RolloutFailureError, match="here is the fix"):
        check_failures([group], max_frac=0.5, step=1)


def test_an_experiment_loads_its_agent_with_the_template_arguments():
    from turnrl.experiment.build import load_agent

    config = TrainingConfig(model={"chat_template_kwargs": {"enable_thinking": False}})
    assert load_agent(config).chat_template_kwargs == {"enable_thinking": False}
