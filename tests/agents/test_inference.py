"""The InferenceEngine and TrainableAgent protocols, and the types they exchange."""

import pytest

from turnrl.agents.base import Agent, TrainableAgent
from turnrl.agents.inference import Completion, InferenceEngine


def test_transformers_agent_is_a_trainable_agent(tiny_agent):
    assert isinstance(tiny_agent, TrainableAgent) and isinstance(tiny_agent, Agent)
    assert isinstance(tiny_agent.engine, InferenceEngine)


def test_an_agent_without_engine_is_not_trainable():
    class Echo:
        async def respond(self, conversation):
            raise NotImplementedError

    assert isinstance(Echo(), Agent) and not isinstance(Echo(), TrainableAgent)


def test_an_engine_missing_update_weights_is_not_an_inference_engine(tiny_agent):
    class Frozen:
        policy_version, max_context, stats = 0, None, None

        async def generate(self, prompt_ids, params):
            raise NotImplementedError

        def release_cache(self): ...
        def configure(self, **settings): ...
        def close(self): ...

    assert not isinstance(Frozen(), InferenceEngine)


def test_completion_version_defaults_to_unknown():
    assert Completion([1], [-0.1], "stop").policy_version is None


@pytest.mark.anyio
async def test_agent_turn_carries_the_engine_version(tiny_agent):
    from turnrl.types import user

    tiny_agent.engine.update_weights((), version=4)
    turn = await tiny_agent.respond([user("hi")])
    assert turn.policy_version == 4
