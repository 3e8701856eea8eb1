"""Rollout throughput: naive vs turnrl's batched rollouts vs one big generate (issue 4).

Three-turn arithmetic episodes on a ~10M-parameter model built like the
embedded one (``build_tiny_model("10m")``: untrained, so its answers are wrong
and every episode takes all three turns), at several concurrency levels.
Generated tokens per second for:

- **naive**: one episode at a time, one ``generate`` call per turn;
- **turnrl**: the Trainer's own rollout path with its defaults
  (``Trainer.collect_groups``: all episodes concurrent, requests merged by the
  GenerationEngine, KV caches reused across turns and a group's shared first
  prompt prefilled once);
- **limit**: one padded ``generate`` call over all first-turn prompts with the
  same sampling settings (no environment, no later turns).

The three run alternately, ``--repeats`` times, and the medians are reported
with the ratios turnrl/naive and turnrl/limit.

``--reuse-kv off`` runs turnrl's path with ``generation.reuse_kv_cache=False``;
``--reuse-kv both`` runs it with and without (``turnrl`` and ``turnrl_plain``,
alternated with the others) and also reports, per ``generate`` call (one per
turn here), the padded prefill tokens and the tokens taken from the cache, and
whether greedy rollouts give the same tokens with and without reuse.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/rollout_throughput.py --threads 1 --reuse-kv both
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

import torch
from transformers import GenerationConfig

from turnrl.agents.engine import SamplingParams
from turnrl.agents.tiny import build_tiny_model, build_tiny_tokenizer
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer
from turnrl.types import Message

GROUP = 8


def sampling_config(agent: TransformersAgent, max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=None,
        eos_token_id=agent.eos_token_ids,
        pad_token_id=agent.tokenizer.pad_token_id,
    )


@torch.no_grad()
def naive(agent: TransformersAgent, scenarios, max_new_tokens: int) -> int:
    """One episode at a time, one generate call per turn. Returns generated tokens."""
    config = sampling_config(agent, max_new_tokens)
    tokens = 0

    async def episode(scenario):
        nonlocal tokens
        env = ArithmeticEnvironment([scenario])
        conversation, _ = await env.reset(options={"scenario": scenario})
        conversation = list(conversation)
        while True:
            ids = torch.tensor([agent.encode(conversation)])
            out = agent.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
            )
            new = out[0, ids.shape[1] :].tolist()
            tokens += len(new)
            if new and new[-1] in agent.eos_token_ids:
                new = new[:-1]
            message = Message(role="assistant", content=agent.tokenizer.decode(new))
            conversation.append(message)
            result = await env.step(message)
            conversation.extend(result.observation)
            if result.terminated or result.truncated:
                return

    async def run_all():
        for scenario in scenarios:
            await episode(scenario)

    asyncio.run(run_all())
    return tokens


def make_trainer(
    agent: TransformersAgent, scenarios, max_new_tokens: int, reuse: bool = True
) -> Trainer:
    config = TrainingConfig.from_profile(
        "balanced",
        generation={"max_new_tokens": max_new_tokens, "reuse_kv_cache": reuse},
        rollout={"scenarios_per_step": len(scenarios), "num_generations": GROUP},
        run={"output_dir": tempfile.mkdtemp(prefix="turnrl-bench-")},
        algorithm={"beta": 0.0},
    )
    return Trainer(agent, ArithmeticEnvironment(scenarios), None, config)


def with_reuse(reuse: bool):
    """The Trainer's rollout path, KV-cache reuse on or off. Returns generated tokens."""

    def run(agent: TransformersAgent, scenarios, max_new_tokens: int) -> int:
        trainer = make_trainer(agent, scenarios, max_new_tokens, reuse)
        groups = asyncio.run(trainer.collect_groups())
        return sum(len(t.completion_ids) for g in groups for tr in g.ok for t in tr.turns)

    return run


def engine_calls(agent: TransformersAgent, since: int) -> list[tuple[int, int, int]]:
    """Per generate call from ``since`` on: rows, padded prefill tokens, tokens from the cache."""
    stats = agent.engine.stats
    return list(
        zip(
            stats.batch_sizes[since:],
            stats.prefill_tokens[since:],
            stats.reused_tokens[since:],
            strict=True,
        )
    )


def greedy_rollout(agent: TransformersAgent, scenarios, max_new_tokens: int, reuse: bool):
    """Completion ids of a greedy rollout per group (sorted: group order is not fixed),
    and the engine's calls (the conversations are the same with and without reuse)."""
    trainer = make_trainer(agent, scenarios, max_new_tokens, reuse)
    trainer.sampling = SamplingParams(max_new_tokens, temperature=0)
    calls = agent.engine.stats.generate_calls
    groups = asyncio.run(trainer.collect_groups())
    tokens = {
        g.scenario.id: sorted([t.completion_ids for t in tr.turns] for tr in g.ok) for g in groups
    }
    return tokens, engine_calls(agent, calls)


@torch.no_grad()
def limit(agent: TransformersAgent, scenarios, max_new_tokens: int) -> int:
    """One left-padded generate over all first-turn prompts. Returns generated tokens."""
    prompts = [agent.encode(s.prompt) for s in scenarios]
    width = max(map(len, prompts))
    pad = agent.tokenizer.pad_token_id
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    out = agent.model.generate(
        input_ids=ids, attention_mask=mask, generation_config=sampling_config(agent, max_new_tokens)
    )
    new = out[:, width:]
    # Count up to and including each row's first eos, as the engine does.
    eos = torch.isin(new, torch.tensor(agent.eos_token_ids))
    lengths = torch.where(eos.any(-1), eos.int().argmax(-1) + 1, new.shape[1])
    return int(lengths.sum())


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    agent = TransformersAgent(build_tiny_model(args.size, seed=0), build_tiny_tokenizer())
    n_params = sum(p.numel() for p in agent.model.parameters())
    print(f"model: tiny '{args.size}', {n_params / 1e6:.1f}M parameters; threads {args.threads}")
    ours = {"off": [("turnrl", with_reuse(False))], "on": [("turnrl", with_reuse(True))]}
    ours["both"] = [("turnrl", with_reuse(True)), ("turnrl_plain", with_reuse(False))]
    runs = [("naive", naive), *ours[args.reuse_kv], ("limit", limit)]
    results, prefill = {}, {}
    for n in args.episodes:
        scenarios = make_scenarios(n=n // GROUP, seed=1)
        episodes = [s for s in scenarios for _ in range(GROUP)]
        timings: dict[str, list[float]] = {name: [] for name, _ in runs}
        for _ in range(args.repeats):
            for name, fn in runs:
                if name == "naive" and n > args.naive_max:
                    continue
                data = scenarios if name.startswith("turnrl") else episodes
                calls = agent.engine.stats.generate_calls
                start = time.perf_counter()
                tokens = fn(agent, data, args.max_new_tokens)
                timings[name].append(tokens / (time.perf_counter() - start))
                if name.startswith("turnrl"):
                    prefill[n, f"{name} (sampled)"] = engine_calls(agent, calls)
        med = {k: statistics.median(v) for k, v in timings.items() if v}
        row = {f"{k}_tok_s": round(v, 1) for k, v in med.items()}
        if "naive" in med:
            row["turnrl_over_naive"] = round(med["turnrl"] / med["naive"], 2)
        row["turnrl_over_limit"] = round(med["turnrl"] / med["limit"], 2)
        if "turnrl_plain" in med:
            row["turnrl_over_plain"] = round(med["turnrl"] / med["turnrl_plain"], 2)
            row["plain_over_limit"] = round(med["turnrl_plain"] / med["limit"], 2)
            on, prefill[n, "turnrl (greedy)"] = greedy_rollout(
                agent, scenarios, args.max_new_tokens, reuse=True
            )
            off, prefill[n, "turnrl_plain (greedy)"] = greedy_rollout(
                agent, scenarios, args.max_new_tokens, reuse=False
            )
            row["greedy_match"] = off == on
        results[n] = row
        print(json.dumps({"episodes": n, **row}))
    print_tables(results, prefill)


def print_tables(results: dict, prefill: dict) -> None:
    plain = any("turnrl_plain_tok_s" in r for r in results.values())
    print()
    head = "| episodes | naive tok/s | turnrl tok/s | "
    head += "no reuse tok/s | " if plain else ""
    head += "limit tok/s | turnrl / naive | turnrl / limit |"
    head += " turnrl / no reuse | no reuse / limit | greedy same |" if plain else ""
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for n, r in results.items():
        line = f"| {n} | {r.get('naive_tok_s', '-')} | {r['turnrl_tok_s']} | "
        line += f"{r['turnrl_plain_tok_s']} | " if plain else ""
        line += (
            f"{r['limit_tok_s']} | {r.get('turnrl_over_naive', '-')} | {r['turnrl_over_limit']} |"
        )
        if plain:
            line += f" {r['turnrl_over_plain']} | {r['plain_over_limit']} | {r['greedy_match']} |"
        print(line)
    print()
    print("Per generate call (sampled: last repeat): rows / padded prefill tokens / cached tokens")
    print("| episodes | path | call 1 | call 2 | call 3 | ... |")
    print("|---|---|---|---|---|---|")
    for (n, name), calls in prefill.items():
        cells = " | ".join(f"{b} / {p:,} / {r:,}" for b, p, r in calls)
        print(f"| {n} | {name} | {cells} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--size", default="10m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--naive-max", type=int, default=128, help="skip naive above this")
    parser.add_argument(
        "--reuse-kv",
        choices=("off", "on", "both"),
        default="on",
        help="KV-cache reuse in turnrl's path (on: the default); both: run it with and without",
    )
    main(parser.parse_args())
