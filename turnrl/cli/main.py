"""The ``turnrl`` command line: its arguments, and how it reports errors.

- ``turnrl demo``: train the embedded model on the arithmetic task and print
  the held-out reward before and after RL (:mod:`turnrl.cli.demo`);
- ``turnrl train EXPERIMENT.yaml``: train what an experiment file describes
  (``--dry-run`` checks it without training; :mod:`turnrl.cli.train`);
- ``turnrl sweep EXPERIMENT.yaml --lr ... [--beta ...]``: short runs over a grid,
  ranked by held-out reward with 95% intervals (:mod:`turnrl.cli.sweep`);
- ``turnrl eval RUN``: held-out reward of a run, its final model or a
  checkpoint (:mod:`turnrl.cli.evaluate`);
- ``turnrl report RUN``: redraw a run's plot and print a summary table
  (:mod:`turnrl.cli.report`);
- ``turnrl chat RUN``: talk to a trained policy in the terminal, or with ``--env``
  play an episode of an environment with it or in its place (:mod:`turnrl.cli.chat`);
- ``turnrl export RUN OUT``: write the policy as a plain Hugging Face model
  (:mod:`turnrl.cli.export`).

Each command's module has a ``command(args)`` that does the work and prints.
Errors a user can fix (a bad config value, a missing file, a run directory in
use, an environment that fails too often) print one message and exit with 2; a
bug still shows its traceback. ``turnrl train`` stopped by SIGINT/SIGTERM saves
a checkpoint, prints how to resume and exits with 130/143.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from turnrl.imports import import_object


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``turnrl`` command."""
    parser = argparse.ArgumentParser(
        prog="turnrl",
        description="Reinforcement learning for multi-turn language-model agents.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_demo(commands)
    _add_train(commands)
    _add_sweep(commands)
    _add_evaluate(commands)
    _add_report(commands)
    _add_chat(commands)
    _add_export(commands)
    return parser


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="train the embedded tiny model on multi-turn arithmetic (CPU, a few minutes)",
        description="Warm-start the embedded model on a sloppy teacher's demonstrations (first "
        "answers usually off by ten, then a retry), then train it with GRPO "
        "on the arithmetic task, and print the held-out reward before and after RL.",
    )
    demo.add_argument("--output", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--steps", type=int, help="RL steps (default: run.max_steps of demo.yaml)")
    demo.add_argument(
        "--warmstart-steps",
        type=int,
        help="supervised steps (default: warmstart.steps of demo.yaml; 0: none)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in the output directory"
    )
    demo.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    demo.set_defaults(handler="turnrl.cli.demo:command")


def _add_train(commands: Any) -> None:
    train = commands.add_parser(
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
    train.set_defaults(handler="turnrl.cli.train:command")


def _add_sweep(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="short runs of an experiment over learning rates and KL coefficients, ranked by "
        "held-out reward",
        description="Train the experiment once per setting (each --lr with each --beta) and "
        "seed, each run in its own subdirectory of --output, and print the held-out reward "
        "before and after each setting's runs with 95% intervals and the final KL, best "
        "first; sweep.md, sweep.csv and sweep.json hold the same. Ctrl-C keeps the finished "
        "runs; the same command continues.",
    )
    sweep.add_argument("config", help="the experiment file (it must hold out scenarios)")
    sweep.add_argument(
        "--lr", nargs="+", metavar="LR", help="learning rates to try (numbers, or auto)"
    )
    sweep.add_argument(
        "--beta", nargs="+", metavar="BETA", help="KL coefficients (algorithm.beta) to try"
    )
    sweep.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="seeds of each setting's runs (default: the file's run.seed)",
    )
    sweep.add_argument("--steps", type=int, help="steps per run (default: the file's)")
    sweep.add_argument(
        "--profile",
        choices=("conservative", "balanced", "aggressive"),
        help="start from this profile instead of the file's",
    )
    sweep.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a setting in every run"
    )
    sweep.add_argument(
        "--output", help="directory of the runs and results (default: run.output_dir-sweep)"
    )
    sweep.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh instead of reusing the finished runs of a sweep in --output",
    )
    sweep.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    sweep.set_defaults(handler="turnrl.cli.sweep:command")


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser(
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
    evaluate.set_defaults(handler="turnrl.cli.evaluate:command")


def _add_report(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="redraw a run's plot (PNG) and print a summary table",
        description="Read RUN_DIR/metrics.jsonl, draw reward, eval reward, KL and loss against "
        "step into RUN_DIR/metrics.png (or --output) and print a summary.",
    )
    report.add_argument("run_dir", help="the run directory")
    report.add_argument("--output", help="PNG path (default: RUN_DIR/metrics.png)")
    report.set_defaults(handler="turnrl.cli.report:command")


def _add_chat(commands: Any) -> None:
    chat = commands.add_parser(
        "chat",
        help="talk to a trained policy, or play an episode of an environment with it",
        description="Load a policy (run directory, final/, checkpoint or model directory) and "
        "chat with it: one line per message; /reset starts over, /quit leaves. With --env, "
        "play one episode of an experiment's environment instead, as training plays it: each "
        "observation, reply, reward, terminated/truncated and info is printed, then the "
        "episode's return and reward; with --human you type the policy's replies.",
    )
    chat.add_argument(
        "target", nargs="?", help="a run directory, its final/, a checkpoint or a model"
    )
    chat.add_argument(
        "--env",
        metavar="EXPERIMENT",
        help="play one episode of this experiment file's environment (a run's config.json "
        "works too)",
    )
    chat.add_argument(
        "--scenario",
        metavar="ID|INDEX",
        help="with --env: the scenario to play, by id or by index into the held-out "
        "scenarios (the training ones when none are held out); default: the first",
    )
    chat.add_argument(
        "--human",
        action="store_true",
        help="with --env: type the agent's replies yourself (no model), to check an environment",
    )
    chat.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="with --env: override a setting of the experiment file (repeatable)",
    )
    chat.add_argument("--seed", type=int, help="with --env: the episode's seed (default: 0)")
    chat.add_argument("--system", help="a system message to start every free conversation")
    chat.add_argument(
        "--max-new-tokens",
        type=int,
        help="reply length limit (default: the experiment's generation.max_new_tokens with "
        "--env, else 64)",
    )
    chat.add_argument(
        "--temperature",
        type=float,
        help="sampling temperature, 0 for greedy (default: the experiment's with --env, else 1)",
    )
    chat.set_defaults(handler="turnrl.cli.chat:command")


def _add_export(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write a trained policy as a Hugging Face model directory",
        description="Save the policy of a run or checkpoint with save_pretrained (LoRA adapters "
        "merged in unless --no-merge), loadable with AutoModelForCausalLM.from_pretrained.",
    )
    export.add_argument("target", help="a run directory, its final/ or a checkpoint directory")
    export.add_argument("output", help="the directory to write")
    export.add_argument("--no-merge", action="store_true", help="with LoRA: save the adapter alone")
    export.set_defaults(handler="turnrl.cli.export:command")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``turnrl`` console script."""
    args = build_parser().parse_args(argv)
    steps, warmstart_steps = getattr(args, "steps", None), getattr(args, "warmstart_steps", None)
    if (steps is not None and steps < 1) or (warmstart_steps is not None and warmstart_steps < 0):
        print("turnrl: --steps must be >= 1 and --warmstart-steps >= 0", file=sys.stderr)
        return 2
    if getattr(args, "force_resume", False) and not args.resume:
        print("turnrl train: error: --force-resume goes with --resume", file=sys.stderr)
        return 2
    try:
        # The handler is imported here, so that `turnrl --help` does not load torch.
        return import_object(args.handler)(args)
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
    from turnrl.training.errors import NonFiniteError, RolloutFailureError
    from turnrl.training.rundir import RunDirError

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
