"""``turnrl sweep``: short runs over learning rates and KL coefficients, ranked.

The library does the work (:class:`turnrl.experiment.sweep.Sweep`); this
module prints a line per finished run and the ranked table, and says how to
continue after Ctrl-C.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

import anyio
from transformers.utils import logging as hf_logging

from turnrl.experiment.sweep import Sweep
from turnrl.experiment.sweep_results import markdown_table
from turnrl.logging import configure_logging


def command(args: argparse.Namespace) -> int:
    """``turnrl sweep EXPERIMENT --lr ... [--beta ...]``: train the grid, print the table."""
    configure_logging(args.log_level)
    hf_logging.disable_progress_bar()
    sweep = Sweep(
        args.config,
        lrs=args.lr,
        betas=args.beta,
        seeds=args.seeds,
        steps=args.steps,
        profile=args.profile,
        overrides=args.set or (),
        output_dir=args.output,
        overwrite=args.overwrite,
    )
    runs = len(sweep.settings) * len(sweep.seeds)
    print(
        f"turnrl sweep: {len(sweep.settings)} settings x {len(sweep.seeds)} seeds = {runs} runs "
        f"of {sweep.config.run.max_steps} steps -> {sweep.output_dir}",
        flush=True,
    )
    try:
        rows = anyio.run(lambda: sweep.run(on_run=_print_run))
    except KeyboardInterrupt as stop:
        print(
            f"turnrl sweep: interrupted; {len(sweep.runs)} finished runs are in "
            f"{sweep.output_dir / 'sweep.md'}; continue with: {_continue_command(args)}",
            file=sys.stderr,
        )
        return getattr(stop, "exit_code", 130)
    print()
    print(markdown_table(rows), end="")
    print(
        "\nheld-out reward: mean ± 95% interval over seeds x held-out scenarios; "
        f"results in {sweep.output_dir}/sweep.{{md,csv,json}}"
    )
    return 0


def _print_run(record: dict[str, Any]) -> None:
    kl = "-" if record["kl"] is None else f"{record['kl']:.4f}"
    before, after = record["eval_before"], record["eval_after"]
    reward = "-" if before is None or after is None else f"{before:.3f} -> {after:.3f}"
    outcome = f"held-out reward {reward}, final KL {kl}"
    if record["error"] is not None:
        outcome = f"diverged ({record['error']})"
    print(
        f"  done: lr {record['lr_used']:g}, beta {record['beta_used']:g}, seed {record['seed']}: "
        f"{outcome} ({record['wall_s']:.0f} s)",
        flush=True,
    )


def _continue_command(args: argparse.Namespace) -> str:
    """The command line that continues this sweep (the same one, without --overwrite)."""
    words = ["turnrl", "sweep", args.config]
    for flag, values in (("--lr", args.lr), ("--beta", args.beta), ("--seeds", args.seeds)):
        if values:
            words += [flag, *map(str, values)]
    for flag, value in (("--steps", args.steps), ("--profile", args.profile)):
        if value is not None:
            words += [flag, str(value)]
    for item in args.set or ():
        words += ["--set", item]
    if args.output:
        words += ["--output", args.output]
    return shlex.join(words)
