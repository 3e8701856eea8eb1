"""KV-cache reuse across turns (turnrl.agents.prefix_cache, GenerationEngine(reuse_kv_cache=True)).

Equivalence tests compare the engine with reuse against the same engine
without it, on the same model and prompts.
"""

import anyio
import pytest
import torch

from turnrl.agents.engine import GenerationEngine, SamplingParams
from turnrl.agents.prefix_cache import PrefixKVStore, layout_prompts
from turnrl.agents.transformers import TransformersAgent
from turnrl.training.batch import build_batch
from turnrl.training.logprobs import token_logprobs
from turnrl.types import Scenario, Trajectory, TrajectoryGroup, user

GREEDY = SamplingParams(max_new_tokens=5, temperature=0)


@pytest.fixture
def agent(tiny_agent):
    tiny_agent.engine.reuse_kv_cache = True
    return tiny_agent


def plain_engine(agent):
    """An engine without reuse over the same model."""
    return GenerationEngine(
        agent.model,
        pad_token_id=agent.tokenizer.pad_token_id,
        eos_token_ids=agent.eos_token_ids,
        reuse_kv_cache=False,
    )


async def episodes(agent, n, turns, sampling):
    """n concurrent episodes of `turns` turns, prompts and replies of varied lengths."""
    trajectories = [None] * n

    async def episode(i):
        conversation = [user(f"What is {'1+' * i}1?")]
        t = Trajectory(scenario=Scenario(id=str(i)), initial_messages=list(conversation))
        for _ in range(turns):
            turn = await agent.respond(conversation, sampling=sampling)
            reply = [user("Wrong." + " Try again." * (i % 3))]
            t.turns.append(turn)
            t.env_messages.append(reply)
            t.env_rewards.append(0.0)
            conversation += [turn.message, *reply]
        trajectories[i] = t

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(episode, i)
    return trajectories


async def generate_all(engine, prompts, params=GREEDY):
    """One batch over `prompts` (all requests queued before the batch is cut)."""
    out = [None] * len(prompts)

    async def one(i):
        out[i] = await engine.generate(prompts[i], params)

    async with anyio.create_task_group() as tg:
        for i in range(len(prompts)):
            tg.start_soon(one, i)
    return out


def assert_same(with_reuse, without):
    """Same tokens and log-probs; takes Completions or Turns."""
    for a, b in zip(with_reuse, without, strict=True):
        assert getattr(a, "token_ids", None) or a.completion_ids
        assert getattr(a, "token_ids", None) == getattr(b, "token_ids", None)
        assert getattr(a, "completion_ids", None) == getattr(b, "completion_ids", None)
        torch.testing.assert_close(
            torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0
        )


def test_layout_puts_cached_and_new_parts_right_aligned():
    # Rows: 2 cached + 1 new, 0 cached + 2 new, 1 cached + 3 new. C = 2, N = 3.
    ids, mask = layout_prompts([[1, 2, 3], [4, 5], [6, 7, 8, 9]], [2, 0, 1], pad_token_id=0)
    assert ids.tolist() == [
        [1, 2, 0, 0, 3],
        [0, 0, 0, 4, 5],
        [0, 6, 7, 8, 9],
    ]
    assert mask.tolist() == [
        [1, 1, 0, 0, 1],
        [0, 0, 0, 1, 1],
        [0, 1, 1, 1, 1],
    ]
    # Position ids are the mask's cumsum - 1: row 0's new token sits at position 2, after its
    # two cached tokens, whatever the pads between them.
    assert (mask.cumsum(-1) - 1)[0, -1] == 2


def test_layout_without_cache_is_left_padding():
    ids, mask = layout_prompts([[1, 2, 3], [4]], [0, 0], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_store_finds_longest_prefix_only():
    store = PrefixKVStore()
    for tokens in ([1, 2], [1, 2, 3, 4], [1, 5, 6]):
        store.put(tokens, [], max_entries=10, max_tokens=None)
    assert store.longest_prefix([1, 2, 3, 4, 7])[1] == 4
    assert store.longest_prefix([1, 2, 3, 9])[1] == 2  # diverges from [1, 2, 3, 4]
    assert store.longest_prefix([1, 5]) is None  # shorter than [1, 5, 6]
    assert store.longest_prefix([9, 1, 2]) is None


def test_store_evicts_oldest_beyond_bounds():
    store = PrefixKVStore()
    for i in range(5):
        store.put([i, i, i], [], max_entries=3, max_tokens=None)
    assert len(store) == 3 and store.tokens == 9
    assert store.longest_prefix([0, 0, 0]) is None and store.longest_prefix([4, 4, 4])
    store.put([7] * 5, [], max_entries=3, max_tokens=8)  # 3 + 5 tokens fit, 3 + 3 + 5 do not
    assert len(store) == 2 and store.tokens == 8
    assert store.longest_prefix([4, 4, 4]) and store.longest_prefix([7] * 5)


@pytest.mark.anyio
async def test_multi_turn_greedy_matches_without_reuse(agent):
    plain = TransformersAgent(agent.model, agent.tokenizer, reuse_kv_cache=False)
    reference = await episodes(plain, 10, 3, GREEDY)
    reused = await episodes(agent, 10, 3, GREEDY)
    for a, b in zip(reused, reference, strict=True):
        assert [t.prompt_ids for t in a.turns] == [t.prompt_ids for t in b.turns]
        assert_same(a.turns, b.turns)
    stats, base = agent.engine.stats, plain.engine.stats
    assert stats.batch_sizes == base.batch_sizes == [10, 10, 10]
    assert stats.reused_tokens[0] == 0 and min(stats.reused_tokens[1:]) > 0
    assert stats.prefill_tokens[0] == base.prefill_tokens[0]
    for t in (1, 2):  # later turns prefill only what the cache lacks, padded to the widest row
        steps = max(len(e.turns[t - 1].completion_ids) for e in reused)  # S of turn t - 1
        fed = [min(len(e.turns[t - 1].completion_ids), steps - 1) for e in reused]
        new = [
            len(e.turns[t].prompt_ids) - len(e.turns[t - 1].prompt_ids) - f
            for e, f in zip(reused, fed, strict=True)
        ]
        assert stats.prefill_tokens[t] == 10 * max(new)
        assert stats.prefill_tokens[t] < 0.6 * base.prefill_tokens[t]


@pytest.mark.anyio
async def test_logprobs_agree_with_training_forward(agent):
    sampling = SamplingParams(max_new_tokens=6, temperature=0.7)
    trajectories = await episodes(agent, 12, 3, sampling)
    assert min(agent.engine.stats.reused_tokens[1:]) > 0
    batch = build_batch(
        [TrajectoryGroup(scenario=trajectories[0].scenario, trajectories=trajectories)],
        pad_token_id=agent.tokenizer.pad_token_id,
    )
    with torch.no_grad():
        logprobs = token_logprobs(
            agent.model, batch.input_ids, batch.attention_mask, temperature=0.7
        )
    mask = batch.loss_mask.bool()
    assert mask.sum() > 36
    torch.testing.assert_close(logprobs[mask], batch.behavior_logprobs[mask], atol=1e-4, rtol=0)


@pytest.mark.anyio
async def test_mixed_batch_of_cached_and_uncached_rows(agent):
    engine, plain = agent.engine, plain_engine(agent)
    first = [agent.encode([user(f"What is {k}+{k}?")]) for k in (1, 22, 333)]
    done = await generate_all(engine, first)
    followups = [
        p + c.token_ids + agent.encode([user("No.")])[:-1] for p, c in zip(first, done, strict=True)
    ]
    fresh = [agent.encode([user("Hi")]), agent.encode([user("What is 4+4?")])]
    mixed = followups + fresh  # the fresh prompts are shorter than any follow-up
    reused = await generate_all(engine, mixed)
    assert_same(reused, await generate_all(plain, mixed))
    assert engine.stats.batch_sizes[-1] == 5
    cached = sum(len(p) + len(c.token_ids) - 1 for p, c in zip(first, done, strict=True))
    assert engine.stats.reused_tokens[-1] == cached  # every follow-up, none of the fresh rows
    longest_new = max(len(f) for f in fresh)
    assert engine.stats.prefill_tokens[-1] == 5 * longest_new


@pytest.mark.anyio
@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(max_new_tokens=5, temperature=0.8)])
async def test_repeated_prompts_share_one_prefill(agent, sampling):
    """A GRPO group's first turn: G rows with one prompt prefill it once."""
    engine = agent.engine
    a, b = (agent.encode([user(q)]) for q in ("What is 12+30?", "What is 7+7, please?"))
    lone = agent.encode([user("Hi")])
    prompts = [a, b, a, a, b, lone]
    torch.manual_seed(0)
    reused = await generate_all(engine, prompts, sampling)
    torch.manual_seed(0)
    plain = plain_engine(agent)
    assert_same(reused, await generate_all(plain, prompts, sampling))
    # One forward over the 2 distinct repeated prompts minus their last token, then the
    # batch feeds 1 token for the repeating rows and all of the lone prompt's.
    shared = 2 * (max(len(a), len(b)) - 1)
    assert engine.stats.prefill_tokens[-1] == shared + 6 * len(lone)
    assert engine.stats.reused_tokens[-1] == 3 * (len(a) - 1) + 2 * (len(b) - 1)
    assert plain.stats.prefill_tokens[-1] == 6 * max(len(a), len(b))
    # The shared entries were consumed; each row left its own, prompt + completion.
    assert engine.kv_store.longest_prefix(a) is None and engine.kv_store.longest_prefix(b) is None
    assert len(engine.kv_store) >= 3


@pytest.mark.anyio
async def test_repeated_prompts_not_shared_when_a_longer_part_is_fed_anyway(agent):
    engine = agent.engine
    long = agent.encode([user("What is 123456789 + 987654321, please?")])
    short = agent.encode([user("1+1?")])
    prompts = [short, short, long]
    reused = await generate_all(engine, prompts)
    assert engine.stats.reused_tokens[-1] == 0
    assert engine.stats.prefill_tokens[-1] == 3 * len(long)
    assert_same(reused, await generate_all(plain_engine(agent), prompts))
    assert engine.kv_store.longest_prefix(short[:-1]) is None  # nothing left behind


@pytest.mark.anyio
async def test_cache_not_used_when_an_uncached_prompt_is_longest(agent):
    engine, plain = agent.engine, plain_engine(agent)
    short = agent.encode([user("1+1?")])
    done = await generate_all(engine, [short])
    followup = short + done[0].token_ids + agent.encode([user("No")])[:-1]
    long = agent.encode([user("What is 123456789 + 987654321, please?")])
    assert len(long) > len(followup)
    both = [followup, long]
    reused = await generate_all(engine, both)
    assert engine.stats.reused_tokens[-1] == 0  # runs as a plain batch
    assert engine.stats.prefill_tokens[-1] == 2 * len(long)
    assert_same(reused, await generate_all(plain, both))


@pytest.mark.anyio
async def test_prompt_equal_to_stored_sequence_feeds_its_last_token(agent):
    engine, plain = agent.engine, plain_engine(agent)
    prompt = agent.encode([user("What is 5+6?")])
    done = await generate_all(engine, [prompt], SamplingParams(max_new_tokens=4, temperature=0))
    stored = prompt + done[0].token_ids[:3]  # the 4th sampled token was never fed
    assert engine.kv_store.longest_prefix(stored)[1] == len(stored)
    reused = await generate_all(engine, [stored])
    assert engine.stats.reused_tokens[-1] == len(stored) - 1
    assert engine.stats.prefill_tokens[-1] == 1
    assert_same(reused, await generate_all(plain, [stored]))


@pytest.mark.anyio
async def test_diverging_prompt_does_not_reuse(agent):
    engine = agent.engine
    prompt = agent.encode([user("What is 5+6?")])
    done = await generate_all(engine, [prompt])
    other = (done[0].token_ids[0] + 1) % len(agent.tokenizer)
    diverged = [*prompt, other, *done[0].token_ids[1:], *agent.encode([user("No")])[:-1]]
    await generate_all(engine, [diverged])
    assert engine.stats.reused_tokens[-1] == 0
    assert engine.stats.prefill_tokens[-1] == len(diverged)


@pytest.mark.anyio
async def test_entries_are_consumed_and_bounded(agent):
    engine = agent.engine
    engine.kv_cache_max_entries = 3
    prompts = [agent.encode([user(f"What is {k}+1?")]) for k in range(5)]
    done = await generate_all(engine, prompts)
    assert len(engine.kv_store) == 3  # the first two rows' entries were evicted
    assert engine.kv_store.longest_prefix(prompts[0] + done[0].token_ids) is None
    followup = prompts[4] + done[4].token_ids + [5]
    key, _ = engine.kv_store.longest_prefix(followup)
    again = await generate_all(engine, [followup])
    assert engine.stats.reused_tokens[-1] > 0
    assert key not in engine.kv_store.entries  # consumed, replaced by the longer sequence
    assert len(engine.kv_store) == 3
    assert engine.kv_store.longest_prefix(followup + again[0].token_ids)[1] > len(followup)


@pytest.mark.anyio
async def test_weight_update_invalidates_the_store(agent):
    engine = agent.engine
    prompt = agent.encode([user("What is 5+6?")])
    done = await generate_all(engine, [prompt])
    followup = prompt + done[0].token_ids + [5]
    optimizer = torch.optim.SGD(agent.model.parameters(), lr=0.1)
    agent.model(torch.tensor([prompt])).logits.sum().backward()
    optimizer.step()
    reused = await generate_all(engine, [followup])
    assert engine.stats.reused_tokens[-1] == 0  # the old keys belong to the old weights
    assert_same(reused, await generate_all(plain_engine(agent), [followup]))


def test_flag_passes_through_the_agent(tiny_agent):
    agent = TransformersAgent(tiny_agent.model, tiny_agent.tokenizer)
    assert agent.engine.reuse_kv_cache is True  # on by default
    agent = TransformersAgent(tiny_agent.model, tiny_agent.tokenizer, reuse_kv_cache=False)
    assert agent.engine.reuse_kv_cache is False


@pytest.mark.anyio
async def test_sliding_window_model_turns_reuse_off(tiny_agent):
    """A sliding-window cache does not hold one column per token: reuse must not be tried."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=len(tiny_agent.tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        sliding_window=4,
    )
    torch.manual_seed(0)
    engine = GenerationEngine(
        MistralForCausalLM(config).eval(),
        pad_token_id=tiny_agent.tokenizer.pad_token_id,
        eos_token_ids=tiny_agent.eos_token_ids,
        reuse_kv_cache=True,
    )
    prompt = tiny_agent.encode([user("What is 5+6?")])
    done = await generate_all(engine, [prompt])
    assert engine.reuse_kv_cache is False and len(engine.kv_store) == 0
    await generate_all(engine, [prompt + done[0].token_ids + [5]])
    assert engine.stats.reused_tokens == [0, 0]
