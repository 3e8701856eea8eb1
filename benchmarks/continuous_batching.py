"""transformers' continuous batching (``generate_batch``) vs one padded ``generate`` (issue 4).

Why the GenerationEngine merges requests into padded ``generate`` calls instead
of feeding transformers' continuous-batching manager: this measures both on the
same prompts (the first-turn arithmetic prompts of ``rollout_throughput.py``, 8 per
question, with its "limit" call as the padded side; the same ~10M-parameter model and
sampling settings), alternated, and reports generated tokens per second (medians).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/continuous_batching.py --episodes 32 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from rollout_throughput import GROUP, limit, sampling_config  # the "limit" of that benchmark

from turnrl.agents.tiny import build_tiny_model, build_tiny_tokenizer
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import make_scenarios


@torch.no_grad()
def continuous(agent: TransformersAgent, prompts: list[list[int]], max_new_tokens: int) -> int:
    """transformers' continuous batching over the same prompts. Returns generated tokens."""
    config = sampling_config(agent, max_new_tokens)
    results = agent.model.generate_batch(inputs=prompts, generation_config=config)
    return sum(len(r.generated_tokens) for r in results.values())


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    agent = TransformersAgent(build_tiny_model(args.size, seed=0), build_tiny_tokenizer())
    agent.model.eval()
    for n in args.episodes:
        scenarios = make_scenarios(n=n // GROUP, seed=1)
        episodes = [s for s in scenarios for _ in range(GROUP)]  # G episodes per scenario
        prompts = [agent.encode(s.prompt) for s in episodes]
        rates: dict[str, list[float]] = {"padded": [], "continuous": []}
        for _ in range(args.repeats):
            for name, fn, data in (
                ("padded", limit, episodes),
                ("continuous", continuous, prompts),
            ):
                start = time.perf_counter()
                tokens = fn(agent, data, args.max_new_tokens)
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
