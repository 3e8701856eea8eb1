"""The three profiles on two built-in multi-turn tasks and a custom game: held-out reward curves.

Each task is an experiment file under ``benchmarks/profiles/`` that leaves the
optimizer and the algorithm to the profile (``optim.lr: auto`` and each
profile's beta, clip, warmup, generations per scenario):

- ``arithmetic``: the demo's task ("What is a+b?", three attempts, 1.0/0.5/0.25),
  warm-started on a sloppy teacher, 100 held-out questions;
- ``calculator``: ``What is 548*858?`` with a calculator tool, warm-started with
  75% of demonstrations calling it, 100 held-out questions;
- ``guess``: the user-written game of ``examples/custom_environment.py``
  (GuessTheNumber), warm-started on a sloppy binary search, 6 held-out secrets.

For each task and seed the warm-start runs once (``Experiment.warmstart``, as
``turnrl train`` runs it) and its weights are saved; every profile then trains
from those weights (``model.path`` set to them, ``warmstart.steps=0``), so the
profiles differ only in what they are. Each run's evaluations (every
``eval.every`` steps, step 0 included) give the curve: held-out mean reward
with its standard error over scenarios.

    python benchmarks/profile_curves.py --tasks arithmetic calculator guess --seeds 0 1

A variant of the profiles (``--set optim.warmup_steps=10 --label +warmup10``) is
recorded under the profile name plus the label.

Results go to ``--output`` (``curves.json``, one record per run, kept between
invocations so seeds can be added; ``curves.png``; a Markdown table on stdout).
Rewards do not depend on machine load; wall times do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import torch

from turnrl.experiment import Experiment
from turnrl.logging import read_metrics
from turnrl.training.distributed import seed_everything

HERE = Path(__file__).resolve().parent / "profiles"
TASKS = ("arithmetic", "calculator", "guess")
PROFILES = ("conservative", "balanced", "aggressive")
REWARD, STDERR, KL = "eval/reward_mean", "eval/reward_mean_stderr", "train/kl"


def warm_start(file: Path, seed: int, where: Path) -> tuple[Path, float, float]:
    """Warm-start the experiment's model once for ``seed`` into ``where``.

    Returns:
        ``(where, final loss, seconds)``; a directory that holds a model already is
        reused (loss nan, 0 s).
    """
    if (where / "config.json").is_file():
        return where, float("nan"), 0.0
    experiment = Experiment.from_yaml(file, overrides=[f"run.seed={seed}"])
    started = time.perf_counter()
    seed_everything(seed)
    losses = experiment.warmstart()
    experiment.agent.save_pretrained(where)
    return where, losses[-1], time.perf_counter() - started


async def train_curve(
    file: Path, start: Path, seed: int, where: Path, *, profile: str | None, overrides: list[str]
) -> dict:
    """One run of ``file`` from the warm-started weights ``start``; its settings and curve.

    The curve is ``[(step, held-out mean reward, its stderr), ...]`` from the
    run's evaluations (step 0 first).
    """
    overrides = [
        *overrides,
        f"model.path={json.dumps(str(start))}",
        "warmstart.steps=0",
        f"run.seed={seed}",
        f"run.output_dir={json.dumps(str(where))}",
        "run.overwrite=true",
        "run.plot=false",
        "run.save_final=false",
    ]
    experiment = Experiment.from_yaml(file, profile=profile, overrides=overrides)
    summary = await experiment.run()
    records = read_metrics(where)
    curve = [(r["step"], r[REWARD], r.get(STDERR)) for r in records if r.get(REWARD) is not None]
    kls = [r[KL] for r in records if r.get(KL) is not None]
    config = json.loads((where / "config.json").read_text(encoding="utf-8"))
    return {
        "seed": seed,
        "estimator": config["algorithm"]["estimator"],
        "lr": config["optim"]["lr"],
        "beta": config["algorithm"]["beta"],
        "num_generations": config["rollout"]["num_generations"],
        "curve": curve,
        "kl_last": kls[-1] if kls else None,
        "kl_max": max(kls) if kls else None,
        "wall_s": round(summary["wall_s"], 1),
    }


def table(records: list[dict]) -> str:
    """Markdown: per task and profile, medians over seeds of before, after, gain."""
    lines = [
        "| task | profile | lr | seeds | before | after (± stderr) | gain per seed | final KL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        for profile in dict.fromkeys(r["profile"] for r in records):
            rows = [r for r in records if r["task"] == task and r["profile"] == profile]
            if not rows:
                continue
            rows.sort(key=lambda r: r["seed"])
            before = statistics.median(r["curve"][0][1] for r in rows)
            after = [r["curve"][-1] for r in rows]
            gains = " ".join(f"{r['curve'][-1][1] - r['curve'][0][1]:+.3f}" for r in rows)
            shown = ", ".join(f"{a[1]:.3f} ± {a[2]:.3f}" for a in after)
            kl = statistics.median(r["kl_last"] or 0.0 for r in rows)
            seeds = ",".join(str(r["seed"]) for r in rows)
            lines.append(
                f"| {task} | {profile} | {rows[0]['lr']:g} | {seeds} | {before:.3f} | {shown} "
                f"| {gains} | {kl:.4f} |"
            )
    return "\n".join(lines)


def plot_curves(records: list[dict], path: Path, *, panel: str | None, line: str) -> None:
    """Held-out reward against step with its stderr: a panel per ``record[panel]`` value
    (one panel when None), a colour per ``record[line]`` value, dashed after seed 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(r[panel] for r in records)) if panel else [None]
    lines = list(dict.fromkeys(r[line] for r in records))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(lines)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        for r in (r for r in records if panel is None or r[panel] == name):
            steps, means, errs = zip(*((c[0], c[1], c[2] or 0.0) for c in r["curve"]), strict=True)
            ax.errorbar(
                steps,
                means,
                yerr=errs,
                color=colors[r[line]],
                label=f"{r[line]} s{r['seed']}",
                capsize=2,
                alpha=0.8,
                linestyle="-" if r["seed"] == 0 else "--",
            )
        ax.set_title(name or "")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out reward")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--profiles", nargs="+", choices=PROFILES, default=list(PROFILES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("runs/profile-curves"))
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run"
    )
    parser.add_argument(
        "--label", default="", help="appended to the profile's name in the results (with --set)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    results = args.output / "curves.json"
    records = json.loads(results.read_text()) if results.is_file() else []
    done = {(r["task"], r["profile"], r["seed"]) for r in records}
    for task in args.tasks:
        for seed in args.seeds:
            todo = [p for p in args.profiles if (task, p + args.label, seed) not in done]
            if not todo:
                continue
            file, place = HERE / f"{task}.yaml", args.output / task / f"seed{seed}"
            start, loss, seconds = warm_start(file, seed, place / "warmstart")
            print(f"{task} seed {seed}: warm-start loss {loss:.4f} in {seconds:.0f} s", flush=True)
            for profile in todo:
                name = profile + args.label
                run = train_curve(
                    file, start, seed, place / name, profile=profile, overrides=args.set
                )
                record = {"task": task, "profile": name, "overrides": args.set} | asyncio.run(run)
                records.append(record)
                results.write_text(json.dumps(records, indent=1))
                print(json.dumps({k: v for k, v in record.items() if k != "curve"}), flush=True)
                print("   curve:", [(s, round(m, 3)) for s, m, _ in record["curve"]], flush=True)
    plot_curves(records, args.output / "curves.png", panel="task", line="profile")
    print(table(records))


if __name__ == "__main__":
    main()
