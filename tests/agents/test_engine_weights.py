"""GenerationEngine weights modes: "shared" samples the trainer's model, "copy" a synced copy."""

import pytest
import torch

from turnrl.agents.engine import GenerationEngine, SamplingParams
from turnrl.agents.inference import InferenceEngine
from turnrl.agents.transformers import TransformersAgent
from turnrl.types import user

GREEDY = SamplingParams(max_new_tokens=4, temperature=0)


def engine(model, agent, **kwargs):
    return GenerationEngine(
        model,
        pad_token_id=agent.tokenizer.pad_token_id,
        eos_token_ids=agent.eos_token_ids,
        **kwargs,
    )


async def sample(engine, prompt):
    """Token ids and log-probs of a greedy completion (the log-probs tell the weights apart)."""
    out = await engine.generate(prompt, GREEDY)
    return out.token_ids, torch.tensor(out.logprobs)


def same_weights(a, b):
    """Two samples from equal weights: the same tokens, log-probs equal to the last bit or two.

    The same values at other addresses are not always bitwise equal through generate:
    on some CPUs (seen on AMD EPYC, not on Intel Xeon) the decode-step kernels round
    differently by 1e-7; the perturbations these tests tell apart move the log-probs by
    1e-2 and more.
    """
    return a[0] == b[0] and torch.allclose(a[1], b[1], rtol=0, atol=1e-5)


def perturb(model):
    """Change every trainable parameter in place, as an optimizer step would."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def test_engine_satisfies_the_protocol(tiny_agent):
    assert isinstance(tiny_agent.engine, InferenceEngine)
    assert tiny_agent.engine.policy_version == 0 and tiny_agent.engine.weights == "shared"


@pytest.mark.anyio
async def test_copy_mode_samples_the_synced_weights_not_the_live_ones(tiny_agent):
    model = tiny_agent.model
    shared, copied = engine(model, tiny_agent), engine(model, tiny_agent, weights="copy")
    assert copied.model is not model and shared.model is model
    prompt = tiny_agent.encode([user("What is 2+3?")])
    before = await sample(copied, prompt)
    torch.manual_seed(1)
    perturb(model)  # the trainer's update, not synced yet
    unsynced, live = await sample(copied, prompt), await sample(shared, prompt)
    assert unsynced[0] == before[0] and torch.equal(unsynced[1], before[1])
    assert not torch.equal(live[1], before[1])  # the perturbation is visible where shared
    copied.update_weights(model.named_parameters(), version=1)
    synced = await sample(copied, prompt)
    assert same_weights(synced, live) and not same_weights(synced, before)
    assert copied.policy_version == 1


@pytest.mark.anyio
async def test_shared_update_records_the_version_without_reading_weights(tiny_agent):
    def never_read():
        raise AssertionError("a shared engine must not read the weights")
        yield

    prompt = tiny_agent.encode([user("hi")])
    params = SamplingParams(max_new_tokens=3)
    assert (await tiny_agent.engine.generate(prompt, params)).policy_version == 0
    assert len(tiny_agent.engine.kv_store) > 0
    versions = [p._version for p in tiny_agent.model.parameters()]
    tiny_agent.engine.update_weights(never_read(), version=7)
    assert [p._version for p in tiny_agent.model.parameters()] == versions  # nothing written
    assert len(tiny_agent.engine.kv_store) == 0  # the cache of the old version is gone
    turn = await tiny_agent.respond([user("hi")])
    assert turn.policy_version == 7


def test_update_weights_names_the_problem(tiny_agent):
    copied = engine(tiny_agent.model, tiny_agent, weights="copy")
    with pytest.raises(KeyError, match="not a parameter or buffer"):
        copied.update_weights({"no.such.weight": torch.zeros(1)}, version=1)
    name, p = next(iter(tiny_agent.model.named_parameters()))
    with pytest.raises(ValueError, match="has shape"):
        copied.update_weights([(name, torch.zeros(*p.shape, 2))], version=1)
    with pytest.raises(ValueError, match="version must be an int"):
        copied.update_weights({}, version=True)
    copied.update_weights(tiny_agent.model.state_dict(), version=2)  # tied weights under both names
    assert copied.policy_version == 2


@pytest.mark.anyio
async def test_configure_switches_mode_and_settings(tiny_agent):
    eng = tiny_agent.engine
    eng.configure(max_batch_size=3, reuse_kv_cache=False)
    assert eng.max_batch_size == 3 and eng.reuse_kv_cache is False and eng.weights == "shared"
    eng.configure(weights="copy")
    assert eng.weights == "copy" and eng.model is not tiny_agent.model
    eng.configure(weights="shared")
    assert eng.model is tiny_agent.model
    with pytest.raises(ValueError, match="'shared' or 'copy'"):
        eng.configure(weights="mirror")
    with pytest.raises(ValueError, match="max_batch_size"):
        eng.configure(max_batch_size=0)


@pytest.mark.anyio
async def test_close_frees_the_copy_and_refuses_requests(tiny_agent):
    copied = engine(tiny_agent.model, tiny_agent, weights="copy")
    copied.close()
    assert copied.model is tiny_agent.model
    with pytest.raises(RuntimeError, match="closed"):
        await copied.generate([5, 6], GREEDY)


@pytest.mark.anyio
async def test_lora_copy_syncs_the_adapters(tiny_path):
    pytest.importorskip("peft")
    from turnrl.training.config import LoraSettings
    from turnrl.training.lora import add_lora, is_peft_model

    torch.manual_seed(0)
    agent = TransformersAgent.from_pretrained(tiny_path, weights="copy")
    agent.model = add_lora(agent.model, LoraSettings(r=4, alpha=8))  # the trainer's wrap
    assert is_peft_model(agent.engine.model) and agent.engine.model is not agent.model
    shared = engine(agent.model, agent)
    prompt = agent.encode([user("What is 2+3?")])
    before = await sample(agent.engine, prompt)
    torch.manual_seed(1)
    perturb(agent.model)  # only the adapters require gradients
    assert torch.equal((await sample(agent.engine, prompt))[1], before[1])
    adapters = [(n, p) for n, p in agent.model.named_parameters() if p.requires_grad]
    assert adapters and all("lora_" in n for n, _ in adapters)
    agent.engine.update_weights(iter(adapters), version=1)
    synced, live = await sample(agent.engine, prompt), await sample(shared, prompt)
    assert same_weights(synced, live) and not same_weights(synced, before)
    assert not torch.equal(synced[1], before[1])
