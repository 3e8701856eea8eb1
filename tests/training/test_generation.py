"""Tests for turnrl.training.generation: config.generation vs the agent's own sampling."""

import json
import warnings
from types import SimpleNamespace

import pytest

from turnrl.agents.inference import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.config import TrainingConfig
from turnrl.training.generation import explicit_sampling, resolve_generation
from turnrl.training.trainer import Trainer


def agent_with(sampling, explicit=True):
    return SimpleNamespace(sampling=sampling, sampling_is_explicit=explicit)


def resolve_quietly(config, agent):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        return resolve_generation(config, agent)


def test_agent_wins_where_the_config_keeps_its_defaults():
    config = TrainingConfig.from_profile("balanced")
    resolved = resolve_quietly(config, agent_with(SamplingParams(3, 0.7, 0.9)))
    generation = resolved.generation
    assert (generation.max_new_tokens, generation.temperature, generation.top_p) == (3, 0.7, 0.9)
    assert config.generation.max_new_tokens == 64  # the caller's config is left as it was


def test_config_wins_where_it_is_set_and_a_warning_names_both_values():
    config = TrainingConfig(generation={"max_new_tokens": 8})
    with pytest.warns(UserWarning) as caught:
        resolved = resolve_generation(config, agent_with(SamplingParams(max_new_tokens=3)))
    assert resolved.generation.max_new_tokens == 8
    message = str(caught[0].message)
    assert "config.generation.max_new_tokens=8 (the agent's is 3)" in message
    assert "config.generation wins" in message


def test_the_rule_is_field_by_field():
    config = TrainingConfig(generation={"temperature": 0.5})
    with pytest.warns(UserWarning, match=r"temperature=0.5 \(the agent's is 0.8\)") as caught:
        resolved = resolve_generation(config, agent_with(SamplingParams(3, 0.8)))
    assert "max_new_tokens" not in str(caught[0].message)
    assert (resolved.generation.max_new_tokens, resolved.generation.temperature) == (3, 0.5)


@pytest.mark.parametrize(
    "config",
    [
        TrainingConfig(generation={"max_new_tokens": 8}),
        TrainingConfig.from_profile("aggressive", generation__max_new_tokens=8),
    ],
    ids=["constructor", "profile-override"],
)
def test_config_set_explicitly_governs_an_agent_left_at_its_defaults(config):
    resolved = resolve_quietly(config, agent_with(SamplingParams(), explicit=False))
    assert resolved is config


def test_explicitly_set_means_any_way_of_setting(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("generation: {max_new_tokens: 8}\n")
    from_file = TrainingConfig.load(path)
    assigned = TrainingConfig()
    assigned.generation.max_new_tokens = 8
    for config in (from_file, assigned):
        with pytest.warns(UserWarning, match="max_new_tokens=8"):
            resolved = resolve_generation(config, agent_with(SamplingParams(3)))
        assert resolved.generation.max_new_tokens == 8


def test_same_values_on_both_sides_are_no_conflict():
    config = TrainingConfig(generation={"max_new_tokens": 3})
    assert resolve_quietly(config, agent_with(SamplingParams(3))) is config


def test_a_greedy_agent_cannot_set_the_training_temperature():
    with pytest.raises(
        ValueError, match=r"greedy \(temperature=0\).*config.generation.temperature"
    ):
        resolve_generation(TrainingConfig(), agent_with(SamplingParams(temperature=0.0)))
    explicit = TrainingConfig(generation={"temperature": 0.9})
    with pytest.warns(UserWarning, match="temperature=0.9"):
        assert resolve_generation(explicit, agent_with(SamplingParams(temperature=0.0))) is explicit


def test_which_agents_have_explicit_sampling():
    assert explicit_sampling(SimpleNamespace()) is None  # an agent without settings
    assert explicit_sampling(agent_with(SamplingParams(3), explicit=False)) is None
    # An agent that does not say: settings other than the defaults count as explicit.
    assert explicit_sampling(SimpleNamespace(sampling=SamplingParams())) is None
    assert explicit_sampling(SimpleNamespace(sampling=SamplingParams(3))) == SamplingParams(3)


def test_transformers_agent_knows_whether_its_sampling_was_given(tiny_path):
    agent = TransformersAgent.from_pretrained(tiny_path)
    assert agent.sampling == SamplingParams() and not agent.sampling_is_explicit
    agent.sampling = SamplingParams(5)
    assert agent.sampling_is_explicit and agent.sampling.max_new_tokens == 5
    given = TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(64))
    assert given.sampling_is_explicit


def turn_lengths(groups):
    return [len(turn.completion_ids) for g in groups for t in g.ok for turn in t.turns]


def run_config(tmp_path, **generation):
    return TrainingConfig.from_profile(
        "balanced",
        rollout={"scenarios_per_step": 2, "num_generations": 2},
        run={"max_steps": 1, "output_dir": str(tmp_path / "run"), "progress": False},
        **({"generation": generation} if generation else {}),
    )


@pytest.mark.anyio
async def test_trainer_samples_with_the_agents_settings_under_a_default_config(tiny_path, tmp_path):
    agent = TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=3))
    env = ArithmeticEnvironment(make_scenarios(n=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer = Trainer(agent, env, None, run_config(tmp_path))
    lengths = turn_lengths(await trainer.collect_groups())
    assert lengths and max(lengths) <= 3
    assert trainer.config.generation.max_new_tokens == 3
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["generation"]["max_new_tokens"] == 3  # the run directory records what ran
    trainer.close()


@pytest.mark.anyio
async def test_trainer_samples_with_an_explicit_config_and_warns(tiny_path, tmp_path):
    agent = TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=3))
    env = ArithmeticEnvironment(make_scenarios(n=4))
    with pytest.warns(UserWarning, match=r"max_new_tokens=12 \(the agent's is 3\)"):
        trainer = Trainer(agent, env, None, run_config(tmp_path, max_new_tokens=12))
    lengths = turn_lengths(await trainer.collect_groups())
    assert max(lengths) > 3  # the untrained model rarely stops early: some turns run long
    assert max(lengths) <= 12
    trainer.close()
