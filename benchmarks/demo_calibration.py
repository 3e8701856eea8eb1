"""Calibrate the demo: warm-start strength vs held-out gain from RL.

Runs the demo's pipeline (warm-start on arithmetic demonstrations, then GRPO
on disjoint questions, evaluation on 100 held-out ones) with the settings
given on the command line, and prints the held-out reward before RL, every
``--eval-every`` steps, and after. The warm-started model is cached in
``--cache`` so several RL settings can be compared from the same start.

Example (the demo's defaults):

    python benchmarks/demo_calibration.py --warmstart-steps 260 --retry-fraction 0.5 \
        --steps 120 --lr 2e-4 --warmup 10 --beta 0.04 --aggregation seq_mean_token_mean
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from turnrl.agents.tiny import tiny_model_path
from turnrl.agents.transformers import TransformersAgent
from turnrl.cli.demo import demo_scenarios
from turnrl.environments.tasks import ArithmeticEnvironment, demonstrations
from turnrl.environments.tasks.arithmetic import RETRY_TEXT
from turnrl.training.config import TrainingConfig
from turnrl.training.distributed import seed_everything
from turnrl.training.sft import supervised_warmstart
from turnrl.training.trainer import Trainer
from turnrl.types import Scenario, assistant, user


@torch.no_grad()
def retry_accuracy(agent: TransformersAgent, scenarios: Sequence[Scenario]) -> float:
    """Fraction of ``scenarios`` whose right answer greedy decoding gives after one miss.

    The conversation is the sloppy teacher's: the question, ``a+b+10``, ``Wrong.
    Try again.``; the answer counts when every token of ``a+b`` (and the end of
    the turn) is the model's argmax, which is what greedy decoding would produce.
    One batched forward, so it is cheap enough to run during the warm-start.
    """
    model = agent.model
    was_training = model.training
    model.eval()
    rows, spans = [], []
    for scenario in scenarios:
        answer = int(scenario.data["answer"])
        context = [*scenario.prompt, assistant(str(answer + 10)), user(RETRY_TEXT)]
        prompt = agent.encode(context)
        target = agent.tokenizer(str(answer), add_special_tokens=False).input_ids
        rows.append([*prompt, *target, agent.eos_token_ids[0]])
        spans.append((len(prompt), len(rows[-1])))
    width = max(map(len, rows))
    pad = agent.tokenizer.pad_token_id or 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # (N, T)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])  # (N, T)
    device = next(model.parameters()).device
    guess = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1)
    guess = guess.cpu()  # (N, T): the token predicted after each position
    right = [
        bool((guess[i, start - 1 : end - 1] == ids[i, start:end]).all())
        for i, (start, end) in enumerate(spans)
    ]
    model.train(was_training)
    return sum(right) / len(right)


async def main(args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    held_out, train = demo_scenarios(seed=args.seed)
    start = Path(args.cache) / (
        f"warm-{args.warmstart_steps}-{args.retry_fraction}-{args.warmstart_lr}-{args.train_on}"
        f"-noise{args.label_noise}-{args.mistake}-seed{args.seed}-stop{args.stop_at}"
    )
    if not (start / "config.json").exists():
        agent = TransformersAgent.from_pretrained(tiny_model_path())
        demos = demonstrations(
            train,
            retry_fraction=args.retry_fraction,
            label_noise=args.label_noise,
            mistake=args.mistake,
            seed=args.seed,
        )
        probe = train[: args.probe_size]

        def stop_when(step: int) -> bool:
            accuracy = retry_accuracy(agent, probe)
            print(json.dumps({"warmstart_step": step, "retry_accuracy": accuracy}), flush=True)
            return args.stop_at is not None and accuracy >= args.stop_at

        supervised_warmstart(
            agent,
            demos,
            stop_when=stop_when,
            check_every=args.probe_every,
            steps=args.warmstart_steps,
            lr=args.warmstart_lr,
            batch_size=64,
            seed=args.seed,
            log_every=100,
            train_on=args.train_on,
        )
        agent.model.save_pretrained(start)
        agent.tokenizer.save_pretrained(start)
    agent = TransformersAgent.from_pretrained(start)
    config = TrainingConfig.from_profile(
        "balanced",
        optim={"lr": args.lr, "micro_batch_size": 32, "warmup_steps": args.warmup},
        generation={"max_new_tokens": 6},
        rollout={"scenarios_per_step": args.scenarios_per_step, "num_generations": 8},
        eval={"every": args.eval_every, "num_generations": args.eval_generations},
        algorithm={
            "beta": args.beta,
            "loss_aggregation": args.aggregation,
            "estimator": args.estimator,
            "scale_rewards": args.scale_rewards,
        },
        run={"max_steps": args.steps, "output_dir": args.output, "seed": args.seed},
    )
    env = ArithmeticEnvironment(train, attempt_rewards=args.attempt_rewards)
    trainer = Trainer(agent, env, None, config, eval_scenarios=held_out)
    return await trainer.train()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmstart-steps", type=int, default=260)
    parser.add_argument("--retry-fraction", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--aggregation", default="seq_mean_token_mean")
    parser.add_argument("--scenarios-per-step", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--eval-generations", type=int, default=4)
    parser.add_argument("--estimator", default="grpo")
    parser.add_argument("--scale-rewards", default=None, help="group | batch | none")
    parser.add_argument("--warmstart-lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise", type=float, default=0.0)
    parser.add_argument("--mistake", default="near", help="near | plus_ten | stall")
    parser.add_argument(
        "--attempt-rewards", type=float, nargs=3, default=(1.0, 0.5, 0.25), metavar="R"
    )
    parser.add_argument(
        "--train-on", default="last", help="warm-start on the last (correct) answer or all"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe-every", type=int, default=20, help="warm-start steps per probe")
    parser.add_argument("--probe-size", type=int, default=64, help="training questions probed")
    parser.add_argument(
        "--stop-at", type=float, default=None, help="end the warm-start at this retry accuracy"
    )
    parser.add_argument("--cache", default="runs/calibration-cache")
    parser.add_argument("--output", default="runs/calibration")
    result = asyncio.run(main(parser.parse_args()))
    print(json.dumps(result, indent=2))
