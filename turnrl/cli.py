"""The ``turnrl`` command line.

``turnrl demo`` trains the embedded model on the arithmetic task and prints
the held-out reward before and after RL.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio


def _demo(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from turnrl.demo import run_demo
    from turnrl.logging import configure_logging

    configure_logging(args.log_level)
    hf_logging.disable_progress_bar()  # weight-loading bars drown the step lines
    print(
        "turnrl demo: a 3.4M-parameter Llama learns multi-turn arithmetic.\n"
        "  phase 1: supervised warm-start on demonstrations\n"
        "  phase 2: GRPO on 'What is a+b?' with retries after 'Wrong. Try again.'\n"
        "  eval: held-out questions (in no demonstration and no RL scenario)\n",
        flush=True,
    )
    result = anyio.run(
        lambda: run_demo(
            args.output, warmstart_steps=args.warmstart_steps, rl_steps=args.steps, seed=args.seed
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
        description="Warm-start the embedded model on demonstrations, then train it with GRPO "
        "on the arithmetic task, and print the held-out reward before and after RL.",
    )
    demo.add_argument("--output", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--steps", type=int, default=120, help="RL steps (default: 120)")
    demo.add_argument(
        "--warmstart-steps", type=int, default=260, help="supervised steps (default: 260)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``turnrl`` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "steps", 1) < 1 or getattr(args, "warmstart_steps", 1) < 0:
        print("turnrl: --steps must be >= 1 and --warmstart-steps >= 0", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
