"""The demo's warm-start alone: its loss curve and what it has learned, by optimizer recipe.

Runs ``supervised_warmstart`` on the demo's demonstrations (seed, steps, lr and
batch as given; the demo's are 360 steps, lr 2e-3, batch 64) and, every
``--probe-every`` steps, greedy-decodes the first answer to the 100 held-out
questions and to 100 training questions: the fraction answered ``a+b`` (right)
and ``a+b+10`` (the teacher's habit). Their sum is the share of questions whose
sum the model knows. Prints one JSON line with the loss (mean of each 20 steps)
and the probes.

    python benchmarks/warmstart_probe.py --seed 1 --steps 480 --beta2 0.999 --max-grad-norm 0
    python benchmarks/warmstart_probe.py --seed 1 --steps 480   # the warm-start's defaults

``--max-grad-norm 0`` turns clipping off; with ``--beta2 0.999`` that is torch's
AdamW as the warm-start used it before it clipped.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

from turnrl.agents.tiny import tiny_model_path
from turnrl.agents.transformers import TransformersAgent
from turnrl.cli.demo import demo_scenarios
from turnrl.environments.tasks import demonstrations
from turnrl.training.distributed import seed_everything
from turnrl.training.sft import supervised_warmstart
from turnrl.types import Scenario


@torch.no_grad()
def first_answers(agent: TransformersAgent, scenarios: Sequence[Scenario]) -> tuple[float, float]:
    """``(right, plus_ten)``: fractions of greedy first answers equal to a+b and a+b+10."""
    model, tokenizer = agent.model, agent.tokenizer
    was_training = model.training
    model.eval()
    prompts = [agent.encode(list(s.prompt)) for s in scenarios]
    width, pad = max(map(len, prompts)), tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # (N, T), left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=agent.eos_token_ids,
    )
    right = plus_ten = 0
    for scenario, row in zip(scenarios, out[:, width:], strict=True):
        text = tokenizer.decode(row, skip_special_tokens=True).strip()
        answer = scenario.data["answer"]
        right += text == str(answer)
        plus_ten += text == str(answer + 10)
    model.train(was_training)
    return round(right / len(scenarios), 2), round(plus_ten / len(scenarios), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=360)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beta2", type=float, default=0.95)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="0: no clipping")
    parser.add_argument("--probe-every", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    held_out, train = demo_scenarios(seed=args.seed)
    agent = TransformersAgent.from_pretrained(tiny_model_path())
    demos = demonstrations(train, retry_fraction=0.8, mistake="plus_ten", seed=args.seed)
    probes: list[dict] = []

    def probe(step: int) -> bool:
        if step % args.probe_every == 0:
            held, seen = first_answers(agent, held_out), first_answers(agent, train[:100])
            probes.append({"step": step, "held_out": held, "train": seen})
        return False

    started = time.perf_counter()
    losses = supervised_warmstart(
        agent,
        demos,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        log_every=10**9,
        train_on="all",
        stop_when=probe,
        check_every=args.probe_every,
        max_grad_norm=args.max_grad_norm or None,
        betas=(0.9, args.beta2),
    )
    every_20 = [sum(losses[i - 20 : i]) / 20 for i in range(20, len(losses) + 1, 20)]
    print(
        json.dumps(
            {
                "seed": args.seed,
                "steps": args.steps,
                "beta2": args.beta2,
                "max_grad_norm": args.max_grad_norm,
                "loss_per_20": [round(x, 3) for x in every_20],
                "probes (right, plus_ten)": probes,
                "seconds": round(time.perf_counter() - started),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
