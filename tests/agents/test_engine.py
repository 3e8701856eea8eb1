import anyio
import pytest
import torch

from turnrl.agents.engine import ContextOverflowError, SamplingParams
from turnrl.types import user


@pytest.mark.anyio
async def test_concurrent_requests_are_batched(tiny_agent):
    params = SamplingParams(max_new_tokens=4)
    prompts = [tiny_agent.encode([user(f"What is {i}+1?")]) for i in range(32)]
    results = [None] * 32

    async def one(i):
        results[i] = await tiny_agent.engine.generate(prompts[i], params)

    async with anyio.create_task_group() as tg:
        for i in range(32):
            tg.start_soon(one, i)
    assert tiny_agent.engine.stats.generate_calls == 1
    assert tiny_agent.engine.stats.batch_sizes == [32]
    for r in results:
        assert 1 <= len(r.token_ids) <= 4
        assert len(r.logprobs) == len(r.token_ids)
        assert all(lp <= 0 for lp in r.logprobs)


@pytest.mark.anyio
async def test_max_batch_size_and_mixed_params(tiny_agent):
    tiny_agent.engine.max_batch_size = 5
    prompt = tiny_agent.encode([user("hi")])

    async with anyio.create_task_group() as tg:
        for i in range(12):
            params = SamplingParams(max_new_tokens=2 if i % 2 else 3)
            tg.start_soon(tiny_agent.engine.generate, prompt, params)
    sizes = tiny_agent.engine.stats.batch_sizes
    assert sum(sizes) == 12 and max(sizes) <= 5
    assert len(sizes) >= 4  # 6 + 6 requests of two kinds, at most 5 per call


@pytest.mark.anyio
async def test_eos_and_length_stopping(tiny_agent):
    eos = tiny_agent.eos_token_ids[0]
    with torch.no_grad():  # make eos the only possible token: every row stops at once
        tiny_agent.model.lm_head.weight.zero_()
        tiny_agent.model.lm_head.weight[eos] = 1.0
        tiny_agent.model.model.norm.weight.fill_(1.0)
    prompt = tiny_agent.encode([user("hi")])
    out = await tiny_agent.engine.generate(prompt, SamplingParams(max_new_tokens=5, temperature=0))
    assert out.token_ids == [eos] and out.finish_reason == "stop"


@pytest.mark.anyio
async def test_length_finish_reason(tiny_agent):
    with torch.no_grad():  # eos can never be sampled
        tiny_agent.model.lm_head.weight[tiny_agent.eos_token_ids[0]] = -1e4
    prompt = tiny_agent.encode([user("hi")])
    out = await tiny_agent.engine.generate(prompt, SamplingParams(max_new_tokens=3))
    assert len(out.token_ids) == 3 and out.finish_reason == "length"


@pytest.mark.anyio
async def test_padded_rows_match_unbatched(tiny_agent):
    short, long = tiny_agent.encode([user("1")]), tiny_agent.encode([user("What is 12+7?")])
    greedy = SamplingParams(max_new_tokens=4, temperature=0)
    alone = await tiny_agent.engine.generate(short, greedy)
    both = [None, None]

    async def run(i, p):
        both[i] = await tiny_agent.engine.generate(p, greedy)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, short)
        tg.start_soon(run, 1, long)
    assert both[0].token_ids == alone.token_ids
    torch.testing.assert_close(
        torch.tensor(both[0].logprobs), torch.tensor(alone.logprobs), atol=1e-4, rtol=0
    )


@pytest.mark.anyio
async def test_context_overflow_is_clear(tiny_agent):
    with pytest.raises(ContextOverflowError, match="exceeds the model's context"):
        await tiny_agent.engine.generate([5] * 1020, SamplingParams(max_new_tokens=10))


def test_sampling_params_validated():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


@pytest.mark.anyio
async def test_sampling_follows_the_full_distribution(tiny_agent):
    """Samples come from softmax(logits / T) over the whole vocabulary: no hidden top-k.

    The untrained model spreads its mass over all 103 tokens, so a top-k of 50
    (transformers' default when top_k is unset) would leave a large gap.
    """
    engine = tiny_agent.engine
    prompt = tiny_agent.encode([user("What is 2+3?")])
    params = SamplingParams(max_new_tokens=1, temperature=1.0)
    torch.manual_seed(0)
    counts = torch.zeros(len(tiny_agent.tokenizer))

    async def one():
        completion = await engine.generate(prompt, params)
        counts[completion.token_ids[0]] += 1

    for _ in range(16):
        async with anyio.create_task_group() as tg:
            for _ in range(500):
                tg.start_soon(one)
    with torch.no_grad():
        logits = tiny_agent.model(torch.tensor([prompt])).logits[0, -1]
    expected = torch.softmax(logits.float(), -1)
    total_variation = 0.5 * (counts / counts.sum() - expected).abs().sum().item()
    # 8000 samples over 103 tokens: sampling noise alone gives a TV of about 0.045.
    assert total_variation < 0.08, total_variation
