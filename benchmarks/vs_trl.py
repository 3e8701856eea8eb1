"""TRL's GRPOTrainer vs turnrl's Trainer on the same single-turn GRPO job, side by side.

Run (about 2.5 minutes on 2 CPU cores with the defaults)::

    .venv/bin/pip install "trl>=1.0"
    .venv/bin/python benchmarks/vs_trl.py --pairs 3 --steps 20

Both frameworks train the embedded tiny model (``tiny_model_path()``: a 3.4M-parameter
Llama with a character-level tokenizer and a chat template, loaded fresh from disk for
every run) with GRPO on single-turn ``What is a+b?`` prompts (``a`` in 0..99, ``b`` in
0..9, ``make_scenarios(..., seed=0)``), for ``--steps`` optimizer steps. Each run is its
own subprocess (``torch.set_num_threads(2)``, ``OMP_WAIT_POLICY=PASSIVE``, nothing
downloaded: ``HF_HUB_OFFLINE=1``), and runs alternate turnrl, TRL, turnrl, TRL, ... for
``--pairs`` pairs. Reported per framework (medians over runs):

- **step (s)**: median per-step wall time (rollout + reward + reference log-probs +
  update). turnrl: ``perf/step_s`` of ``metrics.jsonl``; TRL: a ``TrainerCallback``
  timing ``on_step_begin`` -> ``on_step_end`` (generation happens inside the step).
- **gen tok/s**: generated completion tokens (EOS included, as both count them) over the
  summed step time of the run. turnrl: ``perf/generated_tokens``; TRL: the token ids the
  reward function receives (``completion_ids``).
- **peak RSS (MB)**: the child process's own ``ru_maxrss`` at exit (Linux reports KiB).
  It includes everything the framework imports (TRL also imports ``datasets``,
  ``pyarrow`` and ``pandas``).
- **reward (last 5)**: mean reward over the last 5 steps (turnrl:
  ``rollout/reward_mean``; TRL: the logged ``reward``).
- the ratios turnrl / TRL for gen tok/s and peak RSS.

The raw per-run, per-step numbers go to ``benchmarks/vs_trl.json``.

Settings shared by both (defaults; flags in ``--help``): ``num_generations=8``, 4
prompts per step (32 completions, all in one optimizer step and one micro-batch),
``max_new_tokens`` / ``max_completion_length`` 6, AdamW with lr 1e-4 (betas 0.9/0.999,
no weight decay), no warmup, cosine decay to 10% of the lr over the run, gradient
clipping at 1.0, ``beta=0.04`` (both load a frozen reference model; k3 KL estimator
added to the per-token loss), PPO clip 0.2 on both sides, one pass per batch
(``num_iterations=1``), advantages normalized by the group's reward std, per-token
losses averaged over all completion tokens of the step (turnrl ``token_mean`` = TRL
``loss_type="dapo"``), temperature 1.0, top-p 1.0, no top-k, fp32, seed 0,
no evaluation, no checkpoint.

What had to differ, and why:

- **Reward rule.** turnrl's ``ArithmeticEnvironment(scenarios, max_attempts=1)`` gives
  1.0 when the *first integer* in the reply equals the answer (``parse_answer``: ``7.``
  and ``7 apples`` count), not when the stripped text equals it. To give both sides the
  same reward, the TRL reward function applies the same rule (it calls turnrl's
  ``parse_answer``).
- **Batch arrangement.** TRL counts its batch sizes in completions, not prompts:
  ``per_device_train_batch_size = generation_batch_size = prompts x 8`` with
  ``gradient_accumulation_steps=1`` gives each optimizer step the same 4 prompts x 8
  completions as turnrl's ``scenarios_per_step=4, num_generations=8`` with
  ``micro_batch_size=32``.
- **Schedule.** TRL gets turnrl's schedule rather than the other way round: turnrl's
  ``balanced`` profile decays the lr by a cosine to ``min_lr_ratio=0.1`` of the peak,
  which is TRL's ``lr_scheduler_type="cosine_with_min_lr"`` with ``min_lr_rate=0.1``
  (the same formula, stepped once per optimizer step).
- **Top-k.** Neither side uses top-k (TRL's ``top_k=0``; turnrl's engine sets ``top_k=0``
  explicitly, since transformers 5 fills an unset ``top_k`` with 50). ``--trl-top-k``
  exists to reproduce the first measurements, when turnrl still sampled with top-k 50.
- **TRL defaults turned off** to match turnrl: ``gradient_checkpointing`` (TRL's default
  is on), ``bf16`` (TRL's default is on where supported), ``use_cpu=True``.
- **Which prompts.** Both draw from the same 1,000 questions, but each framework
  shuffles them its own way (seed 0 on both sides), so a step's 4 prompts differ.
  The prompts all have the same shape, so this does not move the timings.
- **Behavior log-probs.** turnrl's engine asks ``generate`` for the per-token logits
  and keeps the sampled tokens' log-probs as the PPO ratio's denominator; TRL, with one
  generation per optimizer step, skips them and uses the detached current log-probs
  (ratio exactly 1). Either way a step costs one reference forward and one policy
  forward/backward besides generation.
- **How the two processes run** is otherwise identical: same interpreter, same
  ``--threads``, and ``OMP_WAIT_POLICY=PASSIVE`` for both (``--omp-wait-policy``). On a
  busy machine, libgomp's default busy-waiting made every small op of a 2-thread
  process ~10x slower (a forward over 32 one-token sequences: 9 ms with 1 thread,
  17 ms with 2 threads and PASSIVE, 260 ms with 2 threads and the default), and TRL
  paid it (TRL steps took ~8 s instead of ~0.5 s) while turnrl hardly did (probably
  because it generates from a worker thread, so libgomp sees more threads than CPUs
  and throttles its spinning): an artifact of the shared machine, not a property of
  either framework. Pass ``--omp-wait-policy unset`` to see it.

Timings are noisy on a shared machine; the load average at the start is recorded in the
JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

FRAMEWORKS = ("turnrl", "trl")
RESULTS_PATH = Path(__file__).with_suffix(".json")
LAST_STEPS = 5  # reward is averaged over this many final steps


# --------------------------------------------------------------------------- child side


def _scenarios() -> list[Any]:
    """The shared prompt pool: every ``a+b`` with ``a`` in 0..99 and ``b`` in 0..9."""
    from turnrl.environments.tasks import make_scenarios

    return make_scenarios(low=0, high=99, b_range=(0, 9), ops=("+",), seed=0)


def run_turnrl(args: argparse.Namespace, workdir: Path) -> list[dict[str, float]]:
    """Train with turnrl's Trainer and return one record per step.

    Args:
        args: The benchmark settings.
        workdir: A scratch directory for the run (``metrics.jsonl`` lands there).

    Returns:
        Per-step ``step``, ``step_s``, ``generated_tokens`` and ``reward``.
    """
    import turnrl
    from turnrl.agents.tiny import tiny_model_path
    from turnrl.environments.tasks import ArithmeticEnvironment

    group_size = args.prompts * args.num_generations
    agent = turnrl.TransformersAgent.from_pretrained(
        args.model or tiny_model_path(),
        sampling=turnrl.SamplingParams(max_new_tokens=args.max_new_tokens),
    )
    env = ArithmeticEnvironment(_scenarios(), max_attempts=1)
    config = turnrl.TrainingConfig.from_profile(
        "balanced",
        optim={"lr": args.lr, "warmup_steps": 0, "micro_batch_size": group_size},
        algorithm={"beta": args.beta},
        generation={"max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_p": 1.0},
        rollout={"scenarios_per_step": args.prompts, "num_generations": args.num_generations},
        eval={"every": 0},
        run={
            "max_steps": args.steps,
            "output_dir": str(workdir / "turnrl"),
            "save_final": False,
            "seed": 0,
        },
    )
    trainer = turnrl.Trainer(agent, env, None, config)
    asyncio.run(trainer.train())
    records = []
    lines = (workdir / "turnrl" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    for line in lines:
        row = json.loads(line)
        if "perf/step_s" not in row:  # e.g. an evaluation-only line
            continue
        records.append(
            {
                "step": int(row["step"]),
                "step_s": float(row["perf/step_s"]),
                "generated_tokens": float(row["perf/generated_tokens"]),
                "reward": float(row["rollout/reward_mean"]),
            }
        )
    return records


def run_trl(args: argparse.Namespace, workdir: Path) -> list[dict[str, float]]:
    """Train with TRL's GRPOTrainer and return one record per step.

    Args:
        args: The benchmark settings.
        workdir: A scratch directory for TRL's ``output_dir``.

    Returns:
        Per-step ``step``, ``step_s``, ``generated_tokens`` and ``reward`` (plus TRL's
        ``completions/mean_length`` as ``trl_mean_length``, a cross-check).
    """
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from turnrl.agents.tiny import tiny_model_path
    from turnrl.environments.tasks import parse_answer

    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": m.role, "content": m.content} for m in s.prompt],
                "answer": int(s.data["answer"]),
            }
            for s in _scenarios()
        ]
    )
    generated = {"tokens": 0}

    def correct_answer(
        completions: list[list[dict[str, str]]],
        answer: list[int],
        completion_ids: list[list[int]],
        **kwargs: Any,
    ) -> list[float]:
        """1.0 when the reply's first integer is the answer (turnrl's rule), else 0.0."""
        generated["tokens"] += sum(len(ids) for ids in completion_ids)
        return [
            1.0 if parse_answer(c[0]["content"]) == a else 0.0
            for c, a in zip(completions, answer, strict=True)
        ]

    class StepTimer(TrainerCallback):
        """Times each optimizer step and collects what TRL logs for it."""

        def __init__(self) -> None:
            self.records: list[dict[str, float]] = []
            self._started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.records.append(
                {
                    "step": state.global_step,
                    "step_s": time.perf_counter() - self._started,
                    "generated_tokens": float(generated["tokens"]),
                }
            )
            generated["tokens"] = 0

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
        ) -> None:
            logs = logs or {}
            if "reward" in logs and self.records and self.records[-1]["step"] == state.global_step:
                self.records[-1]["reward"] = float(logs["reward"])
                self.records[-1]["trl_mean_length"] = float(logs["completions/mean_length"])

    group_size = args.prompts * args.num_generations
    config = GRPOConfig(
        output_dir=str(workdir / "trl"),
        max_steps=args.steps,
        num_generations=args.num_generations,
        per_device_train_batch_size=group_size,
        generation_batch_size=group_size,
        gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=args.trl_top_k,
        learning_rate=args.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=args.beta,
        epsilon=0.2,
        num_iterations=1,
        scale_rewards="group",
        loss_type="dapo",
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        seed=0,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=str(args.model or tiny_model_path()),
        reward_funcs=correct_answer,
        args=config,
        train_dataset=dataset,
        callbacks=[timer],
    )
    trainer.train()
    return timer.records


def child_main(args: argparse.Namespace) -> None:
    """Run one framework in this process and write its result JSON to ``args.result``."""
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"vs_trl_{args.child}_") as tmp:
        runner = run_turnrl if args.child == "turnrl" else run_trl
        steps = runner(args, Path(tmp))
    result = {
        "framework": args.child,
        "steps": steps,
        "wall_s": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")


# -------------------------------------------------------------------------- parent side


def launch(framework: str, args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Run one framework in a fresh subprocess and return its result with a summary.

    Raises:
        RuntimeError: The child failed (its output's tail is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="vs_trl_") as tmp:
        result_path = Path(tmp) / "result.json"
        env = os.environ | {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        if args.omp_wait_policy != "unset":
            env["OMP_WAIT_POLICY"] = args.omp_wait_policy
        cmd = [sys.executable, __file__, *argv, "--child", framework, "--result", str(result_path)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not result_path.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise RuntimeError(f"{framework} run failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(result_path.read_text(encoding="utf-8"))
    result["summary"] = summarize_run(result)
    return result


def summarize_run(result: dict[str, Any]) -> dict[str, float]:
    """Median step time, tokens per second, peak RSS and final reward of one run."""
    steps = result["steps"]
    if not steps:
        raise RuntimeError(f"{result['framework']} run logged no steps")
    total_s = sum(s["step_s"] for s in steps)
    tokens = sum(s["generated_tokens"] for s in steps)
    last = [s["reward"] for s in steps[-LAST_STEPS:] if "reward" in s]
    return {
        "steps": float(len(steps)),
        "step_s_median": statistics.median(s["step_s"] for s in steps),
        "gen_tokens": tokens,
        "gen_tokens_per_s": tokens / total_s,
        "peak_rss_mb": result["peak_rss_mb"],
        "reward_last": statistics.fmean(last) if last else float("nan"),
        "wall_s": result["wall_s"],
    }


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per framework, the median over runs of each summary number."""
    out = {}
    for framework in FRAMEWORKS:
        summaries = [r["summary"] for r in runs if r["framework"] == framework]
        out[framework] = {key: statistics.median(s[key] for s in summaries) for key in summaries[0]}
    return out


def table(agg: dict[str, dict[str, float]], last: int) -> str:
    """The Markdown table of the aggregated numbers, with the turnrl / TRL ratios."""
    head = (
        f"| framework | step (s, median) | gen tok/s | peak RSS (MB) | reward (last {last}) "
        "| run wall (s) |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for framework in FRAMEWORKS:
        a = agg[framework]
        lines.append(
            f"| {framework} | {a['step_s_median']:.3f} | {a['gen_tokens_per_s']:.0f} "
            f"| {a['peak_rss_mb']:.0f} | {a['reward_last']:.3f} | {a['wall_s']:.1f} |"
        )
    tps = agg["turnrl"]["gen_tokens_per_s"] / agg["trl"]["gen_tokens_per_s"]
    rss = agg["turnrl"]["peak_rss_mb"] / agg["trl"]["peak_rss_mb"]
    step = agg["turnrl"]["step_s_median"] / agg["trl"]["step_s_median"]
    lines.append(f"| turnrl / TRL | {step:.2f}x | {tps:.2f}x | {rss:.2f}x | | |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Installed versions of the packages that matter here."""
    out = {"python": platform.python_version()}
    for package in ("turnrl", "trl", "transformers", "torch", "accelerate", "datasets"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line settings (the ``--child`` / ``--result`` pair is internal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="turnrl/TRL run pairs")
    parser.add_argument(
        "--model",
        default=None,
        help="local model directory to start from (default: the embedded tiny model); "
        "e.g. the demo's warm-started model, so that rewards are not all zero",
    )
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--num-generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=6, help="max completion tokens")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (> 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--trl-top-k",
        type=int,
        default=0,
        help="TRL's top_k (0: none, like turnrl's engine; 50 reproduces the old engine)",
    )
    parser.add_argument(
        "--omp-wait-policy",
        choices=("PASSIVE", "ACTIVE", "unset"),
        default="PASSIVE",
        help="OMP_WAIT_POLICY of both children ('unset': inherit this environment's)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="raw results JSON")
    parser.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.beta <= 0:
        parser.error("--beta must be > 0 (the comparison includes the reference model)")
    if args.pairs < 1 or args.steps < 1 or args.prompts < 1 or args.num_generations < 2:
        parser.error("--pairs, --steps and --prompts must be >= 1, --num-generations >= 2")
    return args


def main() -> None:
    """Alternate turnrl and TRL runs, print the table, write the raw numbers."""
    args = parse_args()
    if args.child:
        child_main(args)
        return
    shared = [
        f"--steps={args.steps}",
        f"--prompts={args.prompts}",
        f"--num-generations={args.num_generations}",
        f"--max-new-tokens={args.max_new_tokens}",
        f"--lr={args.lr}",
        f"--beta={args.beta}",
        f"--threads={args.threads}",
        f"--trl-top-k={args.trl_top_k}",
        *([f"--model={args.model}"] if args.model else []),
    ]
    load = os.getloadavg()
    runs = []
    for pair in range(args.pairs):
        for framework in FRAMEWORKS:
            result = launch(framework, args, shared)
            result["pair"] = pair
            runs.append(result)
            s = result["summary"]
            print(
                f"pair {pair + 1}/{args.pairs} {framework:>6}: step {s['step_s_median']:.3f} s, "
                f"{s['gen_tokens_per_s']:.0f} gen tok/s, {s['peak_rss_mb']:.0f} MB, "
                f"reward {s['reward_last']:.3f}, {s['wall_s']:.1f} s in all",
                flush=True,
            )
    agg = aggregate(runs)
    last = min(LAST_STEPS, args.steps)
    print()
    print(table(agg, last))
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "result", "output")}
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": settings,
        "versions": versions(),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": load},
        "median_over_runs": agg,
        "ratios_turnrl_over_trl": {
            "gen_tokens_per_s": agg["turnrl"]["gen_tokens_per_s"] / agg["trl"]["gen_tokens_per_s"],
            "peak_rss_mb": agg["turnrl"]["peak_rss_mb"] / agg["trl"]["peak_rss_mb"],
            "step_s_median": agg["turnrl"]["step_s_median"] / agg["trl"]["step_s_median"],
        },
        "runs": runs,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nraw numbers: {args.output}")


if __name__ == "__main__":
    main()
