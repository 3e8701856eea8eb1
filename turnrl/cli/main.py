"""The ``turnrl`` command line.

- ``turnrl demo``: train the embedded model on the arithmetic task and print
  the held-out reward before and after RL;
- ``turnrl train EXPERIMENT.yaml``: train what an experiment file describes
  (``--dry-run`` checks it without training);
- ``turnrl eval RUN``: held-out reward of a run, its final model or a checkpoint;
- ``turnrl report RUN``: redraw a run's plot and print a summary table;
- ``turnrl chat RUN``: talk to a trained policy in the terminal;
- ``turnrl export RUN OUT``: write the policy as a plain Hugging Face model.

Handlers print; the work is in :mod:`turnrl.runs`, :mod:`turnrl.experiment`,
:mod:`turnrl.report` and :mod:`turnrl.training.export`. Errors a user can fix
(a bad config value, a missing file, a run directory in use, an environment
that fails too often) print one message and exit with 2; a bug still shows its
traceback. ``turnrl train`` stopped by SIGINT/SIGTERM saves a checkpoint, prints
how to resume and exits with 130/143.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Sequence
from typing import Any

import anyio


def _demo(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from turnrl.demo import run_demo
    from turnrl.logging import configure_logging

    configure_logging(args.log_level)
    hf_logging.disable_progress_bar()  # weight-loading bars drown the step lines
    print(
        "turnrl demo: a 3.4M-parameter Llama learns multi-turn arithmetic.\n"
        "  phase 1: supervised warm-start on a sloppy teacher's demonstrations\n"
        "           (first answers usually off by ten, then a retry)\n"
        "  phase 2: GRPO on 'What is a+b?' with retries after 'Wrong. Try again.';\n"
        "           the reward pays most for a right first answer\n"
        "  eval: held-out questions (in no demonstration and no RL scenario)\n",
        flush=True,
    )
    result = anyio.run(
        lambda: run_demo(
            args.output,
            warmstart_steps=args.warmstart_steps,
            rl_steps=args.steps,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    )
    if result["gain"] is None:
        print("\nno held-out reward: every evaluation episode failed (see the log above)")
        return 1
    print()
    print(f"  held-out reward before RL : {result['eval_before']:.3f}")
    print(f"  held-out reward after RL  : {result['eval_after']:.3f}")
    print(f"  gain                      : {result['gain']:+.3f}")
    print(
        f"  wall time                 : {result['total_s']:.0f} s "
        f"(warm-start {result['warmstart_s']:.0f} s, RL with evals {result['rl_s']:.0f} s)"
    )
    print(f"  run directory             : {result['run_dir']}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from turnrl.experiment import build_experiment, load_experiment
    from turnrl.logging import configure_logging
    from turnrl.runs import dry_run, run_experiment
    from turnrl.training.trainer import TrainingInterrupted

    configure_logging(args.log_level)
    _quiet_transformers()
    overrides = [*(args.set or ()), *(["run.overwrite=true"] if args.overwrite else [])]
    config = load_experiment(args.config, profile=args.profile, overrides=overrides)
    experiment = build_experiment(config)
    if args.dry_run:
        result = anyio.run(dry_run, experiment)
        _print_dry_run(experiment, result)
        return 0
    try:
        result = anyio.run(
            lambda: run_experiment(experiment, resume=args.resume, force_resume=args.force_resume)
        )
    except TrainingInterrupted as stop:
        print(
            f"turnrl train: stopped by {signal.Signals(stop.signum).name} after step {stop.step}, "
            f"checkpoint {stop.checkpoint}; resume with: {_resume_command(args)}",
            file=sys.stderr,
        )
        return stop.exit_code
    print()
    for key, label in (("eval_before", "held-out reward before"), ("eval_after", "after")):
        if result[key] is not None:
            print(f"  {label:<24}: {result[key]:.3f}")
    print(f"  {'steps':<24}: {result['steps']}")
    print(f"  {'wall time':<24}: {result['wall_s'] + result['warmstart_s']:.0f} s")
    print(f"  {'run directory':<24}: {result['run_dir']}")
    return 0


def _resume_command(args: argparse.Namespace) -> str:
    """The ``turnrl train`` command line that continues this run."""
    words = ["turnrl", "train", args.config]
    if args.profile:
        words += ["--profile", args.profile]
    for item in args.set or ():
        words += ["--set", item]
    return shlex.join([*words, "--resume"])


def _print_dry_run(experiment: Any, result: dict[str, Any]) -> None:
    cfg = experiment.config
    metrics = result["metrics"]
    rewards = ", ".join(f"{fn.name} x{w:g}" for fn, w in experiment.rewards.items()) or "none"
    lines = [
        ("model", cfg.model.path or "embedded tiny model"),
        ("parameters", f"{result['parameters']:,} ({result['trainable']:,} trainable)"),
        ("environment", cfg.environment.target),
        (
            "scenarios",
            f"{len(experiment.train_scenarios)} train, {len(experiment.eval_scenarios)} held out",
        ),
        ("rewards", f"environment + {rewards}" if experiment.rewards else "environment"),
        (
            "estimator",
            f"{cfg.algorithm.estimator} (beta {cfg.algorithm.beta:g}, "
            f"lr {cfg.optim.lr:g}, profile {cfg.profile})",
        ),
        (
            "would run",
            f"{cfg.run.max_steps} steps x {cfg.rollout.scenarios_per_step} scenarios "
            f"x {cfg.rollout.num_generations} generations -> {cfg.run.output_dir}",
        ),
        (
            "warm-start",
            f"{cfg.warmstart.steps} steps on {len(experiment.demonstrations)} demonstrations"
            if cfg.warmstart
            else "none",
        ),
        (
            "one group",
            f"{len(result['trajectories'])} episodes, reward "
            f"{_fmt(metrics.get('rollout/reward_mean'))}, failed "
            f"{_fmt(metrics.get('rollout/failed'))}, {result['tokens']} trained tokens",
        ),
        (
            "timing",
            f"rollout {result['rollout_s']:.2f} s, forward passes {result['forward_s']:.2f} s",
        ),
    ]
    print("dry run: the experiment builds and runs; nothing was trained or written\n")
    for key, value in lines:
        print(f"  {key:<12} {value}")
    sample = result["trajectories"][0]
    print("\n  first episode:")
    for message in sample.conversation:
        print(f"    {message.role:>9}: {message.content!r}")
    if sample.error:
        print(f"    error: {sample.error}")


def _eval(args: argparse.Namespace) -> int:
    from turnrl.logging import configure_logging
    from turnrl.runs import evaluate_run

    configure_logging(args.log_level)
    _quiet_transformers()
    result = anyio.run(
        lambda: evaluate_run(
            args.target,
            config=args.config,
            num_generations=args.num_generations,
            greedy=args.greedy,
            max_scenarios=args.max_scenarios,
            output_dir=args.output,
        )
    )
    print(f"\n  model      : {result['model']}")
    print(f"  scenarios  : {result['scenarios']}")
    for key, value in sorted(result.items()):
        if key.startswith("eval/") and isinstance(value, int | float):
            print(f"  {key[5:]:<22}: {value:.4f}")
    print(f"  samples    : {result['output_dir']}/eval_samples.jsonl")
    return 0


def _report(args: argparse.Namespace) -> int:
    from turnrl.report import format_summary, plot_run, summarize_run

    print(format_summary(summarize_run(args.run_dir)))
    print(f"\nplot: {plot_run(args.run_dir, args.output)}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from turnrl.agents.engine import SamplingParams
    from turnrl.training.export import load_policy
    from turnrl.types import Message

    _quiet_transformers()
    agent = load_policy(args.target, sampling=SamplingParams(args.max_new_tokens, args.temperature))
    start = [Message(role="system", content=args.system)] if args.system else []
    conversation = list(start)
    interactive = sys.stdin.isatty()
    if interactive:
        print("turnrl chat: type a message; /reset starts over, /quit (or Ctrl-D) leaves.")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if line.strip() == "/quit":
            break
        if line.strip() == "/reset":
            conversation = list(start)
            continue
        conversation.append(Message(role="user", content=line))
        turn = anyio.run(agent.respond, conversation)
        conversation.append(turn.message)
        print(f"assistant> {turn.message.content}", flush=True)
    return 0


def _export(args: argparse.Namespace) -> int:
    from turnrl.training.export import export_policy

    _quiet_transformers()
    out = export_policy(args.target, args.output, merge=not args.no_merge)
    print(f"exported to {out} (load it with AutoModelForCausalLM.from_pretrained)")
    return 0


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``turnrl`` command."""
    parser = argparse.ArgumentParser(
        prog="turnrl",
        description="Reinforcement learning for multi-turn language-model agents.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train the embedded tiny model on multi-turn arithmetic (CPU, a few minutes)",
        description="Warm-start the embedded model on a sloppy teacher's demonstrations (first "
        "answers usually off by ten, then a retry), then train it with GRPO "
        "on the arithmetic task, and print the held-out reward before and after RL.",
    )
    demo.add_argument("--output", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--steps", type=int, default=90, help="RL steps (default: 90)")
    demo.add_argument(
        "--warmstart-steps", type=int, default=360, help="supervised steps (default: 360)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in the output directory"
    )
    demo.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    demo.set_defaults(func=_demo)

    train = sub.add_parser(
        "train",
        help="train what an experiment file (YAML or JSON) describes",
        description="Train the model, environment, scenarios and rewards an experiment file "
        "names (see examples/configs/). Settings start from a profile, then the file, then each "
        "--set in order.",
    )
    train.add_argument("config", help="the experiment file (.yaml, .yml or .json)")
    train.add_argument(
        "--profile",
        choices=("conservative", "balanced", "aggressive"),
        help="start from this profile instead of the file's `profile` (default: balanced)",
    )
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set optim.lr=3e-4 --set run.max_steps=10 "
        "(values are parsed as YAML; repeatable)",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config, build every part, play one group and run the forward "
        "passes of an update without training or writing anything; print what would run",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint"
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an output directory that holds a run, deleting its metrics, "
        "checkpoints and final model (without it such a directory is refused)",
    )
    train.add_argument(
        "--force-resume",
        action="store_true",
        help="with --resume: accept settings that change training (lr, group size, beta, "
        "estimator, seed, model, ...) differing from the checkpoint's; they apply from its step",
    )
    train.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser(
        "eval",
        help="held-out reward of a run, its final model or a checkpoint",
        description="Evaluate a trained policy on the held-out scenarios of the experiment the "
        "run was started from (or of --config), and write the samples and results.",
    )
    evaluate.add_argument("target", help="a run directory, its final/ or a checkpoint directory")
    evaluate.add_argument("--config", help="experiment file (default: the run's own)")
    evaluate.add_argument("--num-generations", type=int, help="samples per scenario")
    evaluate.add_argument("--greedy", action="store_true", help="greedy decoding, one sample")
    evaluate.add_argument("--max-scenarios", type=int, help="evaluate on the first N only")
    evaluate.add_argument("--output", help="output directory (default: RUN/eval)")
    evaluate.add_argument("--log-level", default="WARNING", help="logging level")
    evaluate.set_defaults(func=_eval)

    report = sub.add_parser(
        "report",
        help="redraw a run's plot (PNG) and print a summary table",
        description="Read RUN_DIR/metrics.jsonl, draw reward, eval reward, KL and loss against "
        "step into RUN_DIR/metrics.png (or --output) and print a summary.",
    )
    report.add_argument("run_dir", help="the run directory")
    report.add_argument("--output", help="PNG path (default: RUN_DIR/metrics.png)")
    report.set_defaults(func=_report)

    chat = sub.add_parser(
        "chat",
        help="talk to a trained policy in the terminal",
        description="Load a policy (run directory, final/, checkpoint or model directory) and "
        "chat with it: one line per message; /reset starts over, /quit leaves.",
    )
    chat.add_argument("target", help="a run directory, its final/, a checkpoint or a model")
    chat.add_argument("--system", help="a system message to start every conversation")
    chat.add_argument("--max-new-tokens", type=int, default=64, help="reply length limit")
    chat.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    chat.set_defaults(func=_chat)

    export = sub.add_parser(
        "export",
        help="write a trained policy as a Hugging Face model directory",
        description="Save the policy of a run or checkpoint with save_pretrained (LoRA adapters "
        "merged in unless --no-merge), loadable with AutoModelForCausalLM.from_pretrained.",
    )
    export.add_argument("target", help="a run directory, its final/ or a checkpoint directory")
    export.add_argument("output", help="the directory to write")
    export.add_argument("--no-merge", action="store_true", help="with LoRA: save the adapter alone")
    export.set_defaults(func=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``turnrl`` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "steps", 1) < 1 or getattr(args, "warmstart_steps", 1) < 0:
        print("turnrl: --steps must be >= 1 and --warmstart-steps >= 0", file=sys.stderr)
        return 2
    if getattr(args, "force_resume", False) and not args.resume:
        print("turnrl train: error: --force-resume goes with --resume", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt as stop:
        # A TrainingInterrupted (the loop stopped on a signal, after a checkpoint) or a
        # plain Ctrl-C while loading or warm-starting, with nothing to save.
        step = getattr(stop, "step", None)
        done = "interrupted" if step is None else f"stopped after step {step} ({stop.checkpoint})"
        print(f"turnrl {args.command}: {done}", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    except Exception as e:
        # Errors raised in concurrent tasks arrive grouped; report them when all are the user's.
        errors = _leaves(e)
        if not all(isinstance(error, _user_errors()) for error in errors):
            raise
        message = "; ".join(dict.fromkeys(str(error) or type(error).__name__ for error in errors))
        print(f"turnrl {args.command}: error: {message}", file=sys.stderr)
        return 2


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside an exception group (nested groups flattened), or ``[error]``."""
    # Duck-typed: on Python 3.10 anyio raises the `exceptiongroup` backport's class.
    nested = getattr(error, "exceptions", None)
    if isinstance(nested, tuple) and nested and all(isinstance(x, BaseException) for x in nested):
        return [leaf for x in nested for leaf in _leaves(x)]
    return [error]


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user fixes (input, files, environment, settings), not bugs in turnrl."""
    from turnrl.environments.checker import EnvContractError  # torch is imported by now
    from turnrl.training.checkpoint import CheckpointError
    from turnrl.training.rundir import RunDirError
    from turnrl.training.trainer import NonFiniteError, RolloutFailureError

    return (
        ValueError,
        OSError,  # missing, unreadable or unwritable files; a full disk
        ImportError,
        EnvContractError,
        CheckpointError,
        RunDirError,
        RolloutFailureError,
        NonFiniteError,
    )


if __name__ == "__main__":
    raise SystemExit(main())
