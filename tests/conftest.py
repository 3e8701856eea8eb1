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
