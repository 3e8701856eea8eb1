import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_path():
    """The embedded tiny model, built once per test session."""
    from turnrl.agents.tiny import tiny_model_path

    return tiny_model_path()


@pytest.fixture
def tiny_agent(tiny_path):
    """A fresh agent (its own model copy) over the tiny model."""
    import torch

    from turnrl.agents.engine import SamplingParams
    from turnrl.agents.transformers import TransformersAgent

    torch.manual_seed(0)
    return TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=6))


@pytest.fixture
def scripted_engine():
    """``script(agent, replies)``: the agent's engine returns these texts, in order.

    Each reply is tokenized and closed with eos, so decoded text is known.
    """
    from turnrl.agents.engine import Completion

    def script(agent, replies):
        replies = iter(replies)
        eos = agent.eos_token_ids[0]

        async def generate(prompt_ids, params):
            ids = [*agent.tokenizer(next(replies), add_special_tokens=False).input_ids, eos]
            return Completion(token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason="stop")

        agent.engine.generate = generate

    return script
