"""Turn-level credit against trajectory-level: GRPO, turn-level GRPO and turn-level GAE on the quiz.

The task (``benchmarks/credit/quiz.yaml``): three sums per episode, each answer
paid 1/3 on its own turn (:mod:`turnrl.environments.tasks.quiz`), warm-started
on a teacher who answers each question right half the time and otherwise
``a+b+10``, so the warm-started model makes independent mistakes turn by turn.
Trajectory-level GRPO credits every turn with the episode's total against the
group's; ``turn_grpo`` credits turn k with its own return against turn k of the
group's other episodes; ``turn_gae`` with a critic's per-turn values.

For each seed the warm-start runs once and every estimator trains from its
weights with the ``balanced`` profile otherwise (the file's settings), so the
estimators differ only in the credit they give. The curve of each run is its
held-out evaluations (100 quizzes never trained on, every 10 steps).

    python benchmarks/credit.py --seeds 0 1 2

Results go to ``--output`` (``credit.json``, kept between invocations so seeds
can be added; ``credit.png``; a Markdown table on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path

import torch
from profile_curves import plot_curves, train_curve, warm_start

FILE = Path(__file__).resolve().parent / "credit" / "quiz.yaml"
ESTIMATORS = ("grpo", "turn_grpo", "turn_gae")


def table(records: list[dict]) -> str:
    """Markdown: per estimator, the held-out reward before and after per seed, and medians."""
    lines = [
        "| estimator | seeds | before | after per seed (± stderr) | gain per seed | median gain "
        "| reward at half the steps (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for estimator in ESTIMATORS:
        rows = sorted((r for r in records if r["estimator"] == estimator), key=lambda r: r["seed"])
        if not rows:
            continue
        before = statistics.median(r["curve"][0][1] for r in rows)
        after = ", ".join(f"{r['curve'][-1][1]:.3f} ± {r['curve'][-1][2]:.3f}" for r in rows)
        gains = [r["curve"][-1][1] - r["curve"][0][1] for r in rows]
        half = statistics.median(r["curve"][len(r["curve"]) // 2][1] for r in rows)
        lines.append(
            f"| {estimator} | {','.join(str(r['seed']) for r in rows)} | {before:.3f} | {after} "
            f"| {' '.join(f'{g:+.3f}' for g in gains)} | {statistics.median(gains):+.3f} "
            f"| {half:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default: the file's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("runs/credit"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    results = args.output / "credit.json"
    records = json.loads(results.read_text()) if results.is_file() else []
    done = {(r["estimator"], r["seed"]) for r in records}
    extra = [] if args.steps is None else [f"run.max_steps={args.steps}"]
    for seed in args.seeds:
        todo = [e for e in args.estimators if (e, seed) not in done]
        if not todo:
            continue
        place = args.output / f"seed{seed}"
        start, loss, seconds = warm_start(FILE, seed, place / "warmstart")
        print(f"seed {seed}: warm-start loss {loss:.4f} in {seconds:.0f} s", flush=True)
        for estimator in todo:
            overrides = [f"algorithm.estimator={estimator}", *extra]
            run = train_curve(
                FILE, start, seed, place / estimator, profile=None, overrides=overrides
            )
            record = asyncio.run(run)
            records.append(record)
            results.write_text(json.dumps(records, indent=1))
            print(json.dumps({k: v for k, v in record.items() if k != "curve"}), flush=True)
            print("   curve:", [(s, round(m, 3)) for s, m, _ in record["curve"]], flush=True)
    plot_curves(records, args.output / "credit.png", panel="estimator", line="estimator")
    print(table(records))


if __name__ == "__main__":
    main()
