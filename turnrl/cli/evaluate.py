"""``turnrl eval``: the held-out reward of a run, its final model or a checkpoint.

- :func:`evaluate_run`: evaluate a trained policy on its experiment's held-out scenarios;
- :func:`evaluate_policy`: play and score scenarios as a run's evaluations do;
- :func:`find_experiment`: the experiment a run was started from.

Evaluation builds no Trainer: no optimizer, no reference model, no run
directory. It plays through :func:`turnrl.training.evaluation.play_and_score`,
what ``Trainer.evaluate`` plays through, so a frozen LoRA adapter (a run's
``final/``) evaluates like a full model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import torch
from transformers.utils import logging as hf_logging

from turnrl.experiment.build import Experiment, build_experiment
from turnrl.experiment.config import ExperimentConfig, load_experiment
from turnrl.logging import configure_logging
from turnrl.rewards.combine import as_reward, with_timeout
from turnrl.training.config_files import read_json_object
from turnrl.training.distributed import DistributedContext, seed_everything
from turnrl.training.evaluation import eval_metrics, play_and_score
from turnrl.training.export import load_policy, resolve_policy_dir
from turnrl.training.rollout import check_environment, configure_engine, with_limits
from turnrl.types import Scenario, TrajectoryGroup, flatten, save_jsonl


def command(args: argparse.Namespace) -> int:
    """``turnrl eval TARGET``: evaluate and print the held-out metrics."""
    configure_logging(args.log_level)
    hf_logging.disable_progress_bar()
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


async def evaluate_policy(
    experiment: Experiment, scenarios: Sequence[Scenario]
) -> list[TrajectoryGroup]:
    """Play and score ``scenarios`` as a run's evaluations do, with no optimizer or reference.

    The environment gets the run's limits (``rollout.max_turns``, ``env_timeout_s``),
    the rewards the run's ``reward_timeout_s``, the engine the run's generation
    settings, and the episodes are sampled with the ``eval`` settings.

    Raises:
        ValueError: No scenarios, or ``max_new_tokens`` beyond the model's context.
    """
    config, agent = experiment.config, experiment.agent
    env = with_limits(check_environment(experiment.env), config.rollout)
    rewards = with_timeout(as_reward(experiment.rewards or None), config.rollout.reward_timeout_s)
    configure_engine(agent.engine, config.generation)
    with torch.no_grad():
        return await play_and_score(agent, env, scenarios, rewards, config, DistributedContext())


def find_experiment(target: str | Path, config: str | Path | None = None) -> ExperimentConfig:
    """The experiment behind a run directory, its ``final`` or a checkpoint.

    Args:
        target: What ``turnrl eval`` was given.
        config: An experiment file to use instead of the run's own.

    Raises:
        ValueError: The run was not started from an experiment file (a script
            run) and no ``config`` was given.
    """
    if config is not None:
        return load_experiment(config)
    where = resolve_policy_dir(target)
    for candidate in (where, where.parent, where.parent.parent):
        file = candidate / "config.json"
        if file.is_file() and candidate.name != "final":
            data = read_json_object(file, hint="pass --config")
            if "model_type" in data:  # a model's own config.json
                continue
            if "environment" not in data:
                break
            return ExperimentConfig.model_validate(data)
    raise ValueError(
        f"{target}: no experiment config found next to the model (a script's run records its "
        "environment only when the Trainer is given an ExperimentConfig, as turnrl.Experiment "
        "does); pass --config EXPERIMENT.yaml"
    )


async def evaluate_run(
    target: str | Path,
    *,
    config: str | Path | None = None,
    num_generations: int | None = None,
    greedy: bool = False,
    max_scenarios: int | None = None,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Mean reward of a trained policy on the experiment's held-out scenarios.

    Args:
        target: A run directory, its ``final``, a checkpoint or a model directory.
        config: The experiment file (default: the one the run recorded).
        num_generations: Samples per scenario (default: the config's eval setting).
        greedy: Decode greedily (one sample per scenario).
        max_scenarios: Evaluate on the first N held-out scenarios only.
        output_dir: Where ``eval_samples.jsonl`` and ``eval_results.json`` go
            (default: ``eval/`` in the run directory); a previous evaluation's
            files there are replaced.

    Returns:
        The ``eval/*`` metrics, plus ``scenarios`` and ``output_dir``.

    Raises:
        ValueError: No experiment config, it has no held-out scenarios,
            ``num_generations`` or ``max_scenarios`` below 1, or ``output_dir``
            holds a training run.
    """
    for name, value in (("num_generations", num_generations), ("max_scenarios", max_scenarios)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    experiment_config = find_experiment(target, config)
    patch: dict[str, Any] = {"temperature": 0.0} if greedy else {}
    if num_generations is not None:
        patch["num_generations"] = num_generations
    if max_scenarios is not None:
        patch["max_scenarios"] = max_scenarios
    where = resolve_policy_dir(target)
    run_dir = where.parent.parent if (where / "trainer.json").is_file() else where.parent
    out = Path(output_dir) if output_dir is not None else run_dir / "eval"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file; give a directory")
    # A training run's directory, not a previous evaluation's (which has eval_results.json).
    if any((out / name).exists() for name in ("checkpoints", "final")) or (
        (out / "metrics.jsonl").exists() and not (out / "eval_results.json").exists()
    ):
        raise ValueError(
            f"--output {out} holds a training run; evaluation results would mix with it, so "
            "give another directory"
        )
    experiment_config = experiment_config.model_copy(
        update={
            "eval": experiment_config.eval.model_copy(update=patch),
            "warmstart": None,  # the policy is trained already: no demonstrations to load
        }
    )
    experiment = build_experiment(experiment_config, agent=load_policy(where))
    scenarios = experiment.eval_scenarios[: experiment_config.eval.max_scenarios]
    if not scenarios:
        raise ValueError(
            "the experiment has no held-out scenarios: add scenarios.eval or "
            "scenarios.eval_fraction to it"
        )
    seed_everything(experiment_config.run.seed)  # the same command gives the same numbers
    groups = await evaluate_policy(experiment, scenarios)
    metrics = eval_metrics(groups, DistributedContext())  # as the run's evaluations: with _stderr
    out.mkdir(parents=True, exist_ok=True)
    save_jsonl(flatten(groups), out / "eval_samples.jsonl")
    result = {
        **metrics,
        "scenarios": len(scenarios),
        "model": str(where),
        "output_dir": str(out),
    }
    (out / "eval_results.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
