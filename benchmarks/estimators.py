"""Compare the advantage estimators on the demo's arithmetic task (issue 3).

Every estimator starts from the same warm-started embedded model (the demo's
supervised phase, cached in ``--cache``), trains for the same number of steps
with the same rollout budget, and is evaluated on the same 100 held-out
questions every ``--eval-every`` steps; this repeats for each seed. Writes
``benchmarks/estimators.json`` (all curves), ``benchmarks/estimators.png``
(mean eval curve per estimator, min-max band over seeds) and prints a
Markdown table for RESULTS.md.

Example (what RESULTS.md reports):

    pip install -e ".[bench]"
    python benchmarks/estimators.py --steps 40 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import torch

from turnrl.agents.engine import SamplingParams
from turnrl.agents.tiny import tiny_model_path
from turnrl.agents.transformers import TransformersAgent
from turnrl.cli.demo import demo_scenarios
from turnrl.environments.tasks import ArithmeticEnvironment, demonstrations
from turnrl.training.config import TrainingConfig
from turnrl.training.distributed import seed_everything
from turnrl.training.sft import supervised_warmstart
from turnrl.training.trainer import Trainer

HERE = Path(__file__).parent

# Per-estimator settings on top of the shared ones below. GRPO and RLOO use the
# demo's settings; GAE whitens its advantages (the default for gae); GVPO's
# beta scales its gradient (beta/(k-1) x centered reward x sequence log-prob).
ESTIMATOR_SETTINGS: dict[str, dict] = {
    "grpo": {"estimator": "grpo"},
    "rloo": {"estimator": "rloo"},
    "gae": {"estimator": "gae", "gamma": 1.0, "gae_lambda": 0.95, "value_coef": 0.1},
    "gvpo": {"estimator": "gvpo", "beta": 0.1},
    # What GVPO reduces to on its first pass from the behavior policy (w_i = centered
    # rewards): a policy gradient on sequence log-prob sums, no std scaling, no KL
    # to the reference. Run to explain GVPO's result (RESULTS.md).
    "grpo_as_gvpo": {
        "estimator": "grpo",
        "scale_rewards": "none",
        "loss_aggregation": "seq_mean_token_sum",
        "beta": 0.0,
    },
}
DEFAULT_ESTIMATORS = ["grpo", "rloo", "gae", "gvpo"]


def warm_start(cache: Path, steps: int) -> Path:
    """The demo's supervised phase, run once and cached."""
    path = cache / f"warm-{steps}"
    if not (path / "config.json").exists():
        seed_everything(0)
        _, train = demo_scenarios(0)
        agent = TransformersAgent.from_pretrained(tiny_model_path())
        supervised_warmstart(
            agent,
            demonstrations(train, retry_fraction=0.5, seed=0),
            steps=steps,
            lr=2e-3,
            batch_size=64,
            train_on="last",
            log_every=100,
        )
        agent.model.save_pretrained(path)
        agent.tokenizer.save_pretrained(path)
    return path


async def run_one(start: Path, name: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one estimator from ``start`` with one seed; return its eval curve."""
    seed_everything(seed)
    held_out, train = demo_scenarios(0)
    agent = TransformersAgent.from_pretrained(start, sampling=SamplingParams(max_new_tokens=6))
    algorithm = {"beta": 0.04, "loss_aggregation": "seq_mean_token_mean"}
    algorithm |= ESTIMATOR_SETTINGS[name]
    config = TrainingConfig.from_profile(
        "balanced",
        algorithm=algorithm,
        optim={"lr": args.lr, "micro_batch_size": 32, "warmup_steps": args.warmup},
        generation={"max_new_tokens": 6},
        rollout={"scenarios_per_step": args.scenarios_per_step, "num_generations": 8},
        eval={"every": args.eval_every, "num_generations": args.eval_generations},
        run={
            "max_steps": args.steps,
            "seed": seed,
            "output_dir": str(Path(args.output) / f"{name}-seed{seed}"),
            "save_final": False,
        },
    )
    trainer = Trainer(agent, ArithmeticEnvironment(train), None, config, eval_scenarios=held_out)
    started = time.perf_counter()
    await trainer.train()
    wall = time.perf_counter() - started
    rows = [
        json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    curve = [(r["step"], r["eval/reward_mean"]) for r in rows if "eval/reward_mean" in r]
    train_reward = [r["rollout/reward_mean"] for r in rows if "rollout/reward_mean" in r]
    return {"estimator": name, "seed": seed, "eval": curve, "train": train_reward, "wall_s": wall}


def summarize(runs: list[dict]) -> tuple[str, dict]:
    """A Markdown table: final eval (mean, min-max), steps to 80% of the best gain, wall time."""
    by_name: dict[str, list[dict]] = {}
    for run in runs:
        by_name.setdefault(run["estimator"], []).append(run)
    start = statistics.fmean(run["eval"][0][1] for run in runs)
    finals = {name: statistics.fmean(r["eval"][-1][1] for r in rs) for name, rs in by_name.items()}
    best_gain = max(finals.values()) - start
    target = start + 0.8 * best_gain
    lines = [
        f"Eval before RL (all runs start from the same model): {start:.3f}. "
        f"Target for 'steps to 80%': {target:.3f} (start + 0.8 x best mean gain).",
        "",
        "| estimator | final eval, mean (min-max over seeds) | gain | steps to 80% of best gain "
        "(mean curve) | wall time per run (median) |",
        "|---|---|---|---|---|",
    ]
    summary = {}
    for name, rs in by_name.items():
        steps = [s for s, _ in rs[0]["eval"]]
        mean_curve = [statistics.fmean(r["eval"][i][1] for r in rs) for i in range(len(steps))]
        reached = next((s for s, v in zip(steps, mean_curve, strict=True) if v >= target), None)
        lo, hi = min(r["eval"][-1][1] for r in rs), max(r["eval"][-1][1] for r in rs)
        wall = statistics.median(r["wall_s"] for r in rs)
        summary[name] = {"final": finals[name], "reached": reached, "wall_s": wall}
        lines.append(
            f"| {name} | {finals[name]:.3f} ({lo:.3f}-{hi:.3f}) | {finals[name] - start:+.3f} | "
            f"{reached if reached is not None else 'not reached'} | {wall:.0f} s |"
        )
    return "\n".join(lines), summary


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_name: dict[str, list[dict]] = {}
    for run in runs:
        by_name.setdefault(run["estimator"], []).append(run)
    for name, rs in by_name.items():
        steps = [s for s, _ in rs[0]["eval"]]
        values = [[r["eval"][i][1] for r in rs] for i in range(len(steps))]
        ax.plot(steps, [statistics.fmean(v) for v in values], marker="o", label=name)
        ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.15)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out eval reward")
    ax.set_title(f"Estimators on multi-turn arithmetic ({len(rs)} seeds; band: min-max)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    start = warm_start(Path(args.cache), args.warmstart_steps)
    results_path = HERE / f"{args.name}.json"
    runs = []
    for seed in args.seeds:
        for name in args.estimators:
            run = await run_one(start, name, seed, args)
            print(json.dumps({k: run[k] for k in ("estimator", "seed", "eval", "wall_s")}))
            runs.append(run)
    meta = {"command": "python benchmarks/estimators.py " + " ".join(args.argv), "runs": runs}
    results_path.write_text(json.dumps(meta, indent=1))
    table, _ = summarize(runs)
    plot(runs, HERE / f"{args.name}.png")
    print(table)


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--estimators", nargs="+", default=DEFAULT_ESTIMATORS, choices=list(ESTIMATOR_SETTINGS)
    )
    parser.add_argument("--name", default="estimators", help="output files: NAME.json, NAME.png")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--scenarios-per-step", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-generations", type=int, default=2)
    parser.add_argument("--warmstart-steps", type=int, default=260)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="runs/estimators-cache")
    parser.add_argument("--output", default="runs/estimators")
    arguments = parser.parse_args()
    arguments.argv = sys.argv[1:]
    asyncio.run(main(arguments))
