"""The engine samples from the distribution it records, whatever ``generation_config.json`` holds.

transformers fills every generation field a caller leaves unset from the model's
saved generation config. Instruct checkpoints often ship a repetition penalty, a
top-k or a min-p; applied behind the engine's back they change what is sampled
and, before the log-prob recorder, what is recorded, so the first PPO ratio is
off. The model here is the tiny model saved with such a config.
"""

import anyio
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.types import user

# Each of these changes the logits or the sampling when transformers applies it.
LEAKY_GENERATION_CONFIG = {
    "do_sample": True,
    "temperature": 0.6,
    "top_p": 0.8,
    "top_k": 5,
    "min_p": 0.1,
    "typical_p": 0.9,
    "epsilon_cutoff": 0.01,
    "repetition_penalty": 1.3,
    "no_repeat_ngram_size": 2,
    "min_new_tokens": 3,
    "suppress_tokens": [10, 11, 12],
    "begin_suppress_tokens": [13],
    "bad_words_ids": [[14], [15]],
}


@pytest.fixture(scope="module")
def leaky_path(tiny_path, tmp_path_factory):
    """The tiny model saved with :data:`LEAKY_GENERATION_CONFIG` in its generation_config.json."""
    path = tmp_path_factory.mktemp("leaky")
    model = AutoModelForCausalLM.from_pretrained(tiny_path, local_files_only=True)
    for key, value in LEAKY_GENERATION_CONFIG.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_path, local_files_only=True).save_pretrained(path)
    return path


@pytest.fixture
def leaky_agent(leaky_path):
    torch.manual_seed(0)
    agent = TransformersAgent.from_pretrained(leaky_path)
    assert agent.model.generation_config.repetition_penalty == 1.3  # the config was saved
    return agent


@pytest.mark.anyio
@pytest.mark.parametrize("top_p", [1.0, 0.9])
async def test_recorded_logprobs_match_training_forward(leaky_agent, top_p, sampled_logprobs):
    """First-iteration PPO ratio exp(train - behaviour) is 1 to fp32 rounding."""
    leaky_agent.sampling = SamplingParams(max_new_tokens=6, temperature=0.7, top_p=top_p)
    train, behaviour = await sampled_logprobs(leaky_agent, 8)
    assert len(train) > 8 * 3
    ratio = torch.exp(train - behaviour)
    worst = (ratio - 1).abs().max().item()
    assert worst <= 1e-5, worst


@pytest.mark.anyio
async def test_samples_follow_softmax_over_temperature(leaky_agent):
    """One-token samples follow softmax(logits / T) over the whole vocabulary.

    The saved min_p, typical_p, epsilon cutoff and suppressed tokens would cut
    off the tail of the 103 tokens: a total variation above 0.3.
    """
    engine = leaky_agent.engine
    prompt = leaky_agent.encode([user("What is 2+3?")])
    params = SamplingParams(max_new_tokens=1, temperature=1.5)
    torch.manual_seed(0)
    counts = torch.zeros(len(leaky_agent.tokenizer))

    async def one():
        completion = await engine.generate(prompt, params)
        counts[completion.token_ids[0]] += 1

    for _ in range(4):
        async with anyio.create_task_group() as tg:
            for _ in range(500):
                tg.start_soon(one)
    with torch.no_grad():
        logits = leaky_agent.model(torch.tensor([prompt])).logits[0, -1]
    expected = torch.softmax(logits.float() / 1.5, -1)
    total_variation = 0.5 * (counts / counts.sum() - expected).abs().sum().item()
    # 2000 samples over 103 tokens: sampling noise alone gives a TV of about 0.09.
    assert total_variation < 0.15, total_variation


@pytest.mark.anyio
async def test_greedy_decoding_is_the_argmax(leaky_agent):
    """temperature=0 picks each step's argmax; no saved penalty or banned n-gram moves it."""
    prompt = leaky_agent.encode([user("What is 2+3?")])
    completion = await leaky_agent.engine.generate(
        prompt, SamplingParams(max_new_tokens=12, temperature=0)
    )
    ids = torch.tensor([prompt + completion.token_ids])
    with torch.no_grad():
        logits = leaky_agent.model(ids).logits[0, len(prompt) - 1 : -1]  # (S, V)
    assert completion.token_ids == logits.argmax(-1).tolist()
