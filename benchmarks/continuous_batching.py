"""transformers' continuous batching (``generate_batch``) vs one padded ``generate`` (issue 4).

Why the GenerationEngine merges requests into padded ``generate`` calls instead
of feeding transformers' continuous-batching manager: this measures both on the
same prompts (the first-turn arithmetic prompts of ``rollout_throughput.py``, 8 per
question, the
same ~10M-parameter model, the same sampling settings), alternated, and reports
generated tokens per second (medians).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/continuous_batching.py --episodes 32 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import GenerationConfig

from turnrl.agents.tiny import build_tiny_model, build_tiny_tokenizer
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import make_scenarios

GROUP = 8


def sampling(agent: TransformersAgent, max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        eos_token_id=agent.eos_token_ids,
        pad_token_id=agent.tokenizer.pad_token_id,
    )


@torch.no_grad()
def padded(agent: TransformersAgent, prompts: list[list[int]], max_new_tokens: int) -> int:
    """One left-padded generate call. Returns generated tokens (up to each row's eos)."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), agent.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    out = agent.model.generate(
        input_ids=ids, attention_mask=mask, generation_config=sampling(agent, max_new_tokens)
    )
    new = out[:, width:]
    eos = torch.isin(new, torch.tensor(agent.eos_token_ids))
    return int(torch.where(eos.any(-1), eos.int().argmax(-1) + 1, new.shape[1]).sum())


@torch.no_grad()
def continuous(agent: TransformersAgent, prompts: list[list[int]], max_new_tokens: int) -> int:
    """transformers' continuous batching over the same prompts. Returns generated tokens."""
    results = agent.model.generate_batch(
        inputs=prompts, generation_config=sampling(agent, max_new_tokens), progress_bar=False
    )
    return sum(len(r.generated_tokens) for r in results.values())


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    agent = TransformersAgent(build_tiny_model(args.size, seed=0), build_tiny_tokenizer())
    agent.model.eval()
    for n in args.episodes:
        scenarios = make_scenarios(n=n // GROUP, seed=1)  # G episodes per scenario
        prompts = [agent.encode(s.prompt) for s in scenarios for _ in range(GROUP)]
        rates: dict[str, list[float]] = {"padded": [], "continuous": []}
        for _ in range(args.repeats):
            for name, fn in (("padded", padded), ("continuous", continuous)):
                start = time.perf_counter()
                tokens = fn(agent, prompts, args.max_new_tokens)
                rates[name].append(tokens / (time.perf_counter() - start))
        med = {k: round(statistics.median(v), 1) for k, v in rates.items()}
        ratio = round(med["continuous"] / med["padded"], 2)
        print(json.dumps({"episodes": n, **med, "continuous_over_padded": ratio}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--size", default="10m")
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
