"""``turnrl train``: run an experiment file, or check it with ``--dry-run``.

- :func:`run_experiment`: warm-start (optional), train, plot (:meth:`Experiment.run`);
- :func:`dry_run`: build everything and run one group without updating.

Each returns data; :func:`command` prints.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import anyio
from transformers.utils import logging as hf_logging

from turnrl.agents.template_check import TemplateReport
from turnrl.environments.checker import EnvCheckReport, check_env
from turnrl.experiment.build import Experiment, build_experiment
from turnrl.experiment.config import load_experiment
from turnrl.imports import import_dirs
from turnrl.logging import configure_logging
from turnrl.rewards.combine import score_groups
from turnrl.training.errors import TrainingInterrupted
from turnrl.training.rollout import with_limits
from turnrl.training.rollout_metrics import rollout_metrics
from turnrl.training.rundir import check_usable
from turnrl.training.trainer import Trainer


def command(args: argparse.Namespace) -> int:
    """``turnrl train EXPERIMENT``: train (or ``--dry-run``) and print where the run is."""
    configure_logging(args.log_level)
    hf_logging.disable_progress_bar()
    overrides = [*(args.set or ()), *(["run.overwrite=true"] if args.overwrite else [])]
    config = load_experiment(args.config, profile=args.profile, overrides=overrides)
    experiment = build_experiment(config)
    if args.dry_run:
        result = anyio.run(dry_run, experiment)
        _print_dry_run(experiment, result)
        if result["tokens"] == 0:
            print(f"turnrl train: error: {_nothing_trained(result)}", file=sys.stderr)
            return 2
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
    if result["eval_before"] is not None or result["eval_after"] is not None:
        print(f"  {'held-out metric':<24}: {result['eval_metric'].removeprefix('eval/')}")
    for key, label in (("eval_before", "before"), ("eval_after", "after")):
        if result[key] is not None:
            stderr = result[f"{key}_stderr"]
            error = f" ± {stderr:.3f} (stderr over scenarios)" if stderr is not None else ""
            print(f"  {label:<24}: {result[key]:.3f}{error}")
    if result["stopped_by"]:
        print(f"  {'stopped by':<24}: {result['stopped_by']}")
    print(f"  {'steps':<24}: {result['steps']}")
    if config.warmstart is not None and not args.resume:
        print(f"  {'warm-start time':<24}: {result['warmstart_s']:.0f} s")
    print(f"  {'RL time (with evals)':<24}: {result['wall_s']:.0f} s")
    print(f"  {'total wall time':<24}: {result['total_s']:.0f} s (warm-start to saved model)")
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
        ("check_env", _env_check_line(result["env_check"])),
        ("template", _template_line(result["template"])),
        (
            "scenarios",
            f"{len(experiment.train_scenarios)} train, {len(experiment.eval_scenarios)} held out",
        ),
        ("rewards", f"environment + {rewards}" if experiment.rewards else "environment"),
        (
            "estimator",
            f"{cfg.algorithm.estimator} (beta {cfg.algorithm.beta:g}, "
            f"lr {result['lr']:g}{' (auto)' if cfg.optim.lr == 'auto' else ''}, "
            f"profile {cfg.profile})",
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


def _nothing_trained(result: dict[str, Any]) -> str:
    """Why the dry run's group holds no trained token, and what to do."""
    episodes = result["trajectories"]
    failed = [t for t in episodes if t.error]
    if failed:
        errors = Counter(t.error for t in failed).most_common(3)
        summary = "; ".join(f"{n} x {error}" for error, n in errors)
        return (
            f"the dry run would train 0 tokens: {len(failed)} of {len(episodes)} episodes "
            f"failed. {summary}. Fix the cause (the environment, reward or chat template) "
            "before training"
        )
    return (
        f"the dry run would train 0 tokens: its {len(episodes)} episodes sampled no token; "
        "check generation.max_new_tokens and the environment's opening messages"
    )


def _template_line(report: TemplateReport | None) -> str:
    if report is None:
        return "not checked (the agent has no chat template)"
    rewrites = f"; rewrites {', '.join(str(r) for r in report.rewrites)}" if report.rewrites else ""
    return f"{report.mode}, assistant content {report.assistant_content}{rewrites}"


def _env_check_line(report: EnvCheckReport) -> str:
    if report.ended is None:
        return f"passed, but the probe episode had not ended after {report.steps} steps"
    return f"passed; the probe episode ended {report.ended} after {report.steps} steps"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


async def dry_run(experiment: Experiment) -> dict[str, Any]:
    """Check that an experiment runs, without training: what ``turnrl train --dry-run`` does.

    Checks the environment against the contract, plays one group (the first
    training scenario, ``num_generations`` episodes), scores it with the reward
    functions and runs the forward passes of an update (policy, reference and
    value log-probs) without a backward pass or an optimizer step. Nothing is
    written to the run directory, but one that is a file or cannot be written
    is refused, and so is a ``max_new_tokens`` beyond the model's context.

    The chat template is checked as the trainer does
    (:func:`~turnrl.training.chat_template.check_template`); ``turnrl train
    --dry-run`` fails when the group would train 0 tokens.

    Returns:
        ``env_check`` (the environment's :class:`EnvCheckReport`), ``template``
        (the chat template's :class:`TemplateReport`, or None),
        ``trajectories`` (the group), ``metrics`` of the group, ``tokens`` in
        the batch, the ``lr`` used (``optim.lr: auto`` resolved), ``parameters``
        of the policy and the ``rollout_s`` / ``forward_s`` timings.
    """
    check_usable(experiment.config.run.output_dir)
    # Under the run's own limits: rollout.max_turns ends episodes the environment does not.
    env_check = await check_env(with_limits(experiment.env, experiment.config.rollout))
    config = experiment.config.model_copy(deep=True)
    config.rollout.scenarios_per_step = 1
    with tempfile.TemporaryDirectory(prefix="turnrl-dry-run-") as tmp:
        config.run.output_dir = tmp
        config.run.save_final = False
        config.run.progress = False
        config.wandb.enabled = False
        scenarios = experiment.train_scenarios[:1]
        with import_dirs(config.base_dir):  # an algorithm.estimator beside the file
            trainer = Trainer(
                experiment.agent,
                experiment.env,
                experiment.rewards or None,
                config,
                scenarios=scenarios,
            )
        try:
            t0 = time.perf_counter()
            groups = await trainer.collect_groups()
            metrics = await score_groups(groups, trainer.rewards) | rollout_metrics(groups)
            t1 = time.perf_counter()
            ok = [g for g in groups if g.ok]
            tokens = trainer.prepare_batch(ok).num_tokens if ok else 0
        finally:
            trainer.metrics.close()
            trainer.close()
    return {
        "env_check": env_check,
        "trajectories": [t for g in groups for t in g.trajectories],
        "metrics": metrics,
        "tokens": tokens,
        "template": trainer.template,
        "lr": trainer.config.optim.lr,
        "parameters": sum(p.numel() for p in trainer.policy.parameters()),
        "trainable": sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad),
        "rollout_s": t1 - t0,
        "forward_s": time.perf_counter() - t1,
    }


async def run_experiment(
    experiment: Experiment, *, resume: bool = False, force_resume: bool = False
) -> dict[str, Any]:
    """What ``turnrl train`` runs: ``experiment.run()``, the call a script makes."""
    return await experiment.run(resume=resume, force_resume=force_resume)
