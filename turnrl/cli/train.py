"""What the CLI does with an experiment or a finished run, as plain functions.

- :func:`dry_run`: build everything and run one group without updating
  (``turnrl train --dry-run``);
- :func:`run_experiment`: warm-start (optional), train, plot (``turnrl train``);
- :func:`evaluate_run`: held-out reward of a run or checkpoint (``turnrl eval``);
- :func:`find_experiment`: the experiment a run was started from.

Each returns data; printing is the CLI's job.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from turnrl.experiment import Experiment, ExperimentConfig, build_experiment
from turnrl.training.config_files import read_json_object
from turnrl.training.export import load_policy, resolve_policy_dir
from turnrl.training.rundir import check_usable, preflight

log = structlog.get_logger(__name__)


async def dry_run(experiment: Experiment) -> dict[str, Any]:
    """Check that an experiment runs, without training: what ``turnrl train --dry-run`` does.

    Checks the environment against the contract, plays one group (the first
    training scenario, ``num_generations`` episodes), scores it with the reward
    functions and runs the forward passes of an update (policy, reference and
    value log-probs) without a backward pass or an optimizer step. Nothing is
    written to the run directory, but one that is a file or cannot be written
    is refused, and so is a ``max_new_tokens`` beyond the model's context.

    Returns:
        ``trajectories`` (the group), ``metrics`` of the group, ``tokens`` in
        the batch, ``parameters`` of the policy and the ``rollout_s`` /
        ``forward_s`` timings.
    """
    from turnrl.environments.checker import check_env
    from turnrl.rewards.combine import score_groups
    from turnrl.training.batch import build_batch
    from turnrl.training.rollout import collect, rollout_metrics
    from turnrl.training.trainer import Trainer
    from turnrl.training.update import score_batch

    check_usable(experiment.config.run.output_dir)
    await check_env(experiment.env)
    config = experiment.config.model_copy(deep=True)
    with tempfile.TemporaryDirectory(prefix="turnrl-dry-run-") as tmp:
        config.run.output_dir = tmp
        config.run.save_final = False
        config.wandb.enabled = False
        trainer = Trainer(
            experiment.agent,
            experiment.env,
            experiment.rewards or None,
            config,
            scenarios=experiment.train_scenarios,
        )
        t0 = time.perf_counter()
        groups = await collect(
            trainer.agent,
            trainer.env,
            trainer.scenarios[:1],
            config.rollout.num_generations,
            seed=config.run.seed,
            sampling=trainer.sampling,
        )
        metrics = await score_groups(groups, trainer.rewards)
        metrics |= rollout_metrics(groups)
        t1 = time.perf_counter()
        ok = [g for g in groups if g.ok]
        tokens = 0
        if ok:
            batch = build_batch(
                ok, pad_token_id=trainer.agent.tokenizer.pad_token_id, device=trainer.device
            )
            score_batch(trainer.policy, trainer.ref_model, trainer.value_model, batch, config)
            tokens = batch.num_tokens
        trainer.metrics.close()
        trainer.close()
    return {
        "trajectories": [t for g in groups for t in g.trajectories],
        "metrics": metrics,
        "tokens": tokens,
        "parameters": sum(p.numel() for p in trainer.policy.parameters()),
        "trainable": sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad),
        "rollout_s": t1 - t0,
        "forward_s": time.perf_counter() - t1,
    }


async def run_experiment(
    experiment: Experiment, *, resume: bool = False, force_resume: bool = False
) -> dict[str, Any]:
    """Warm-start (when configured and not resuming), train, and plot the run.

    A resumed run skips the warm-start: its checkpoint holds the warm-started
    weights and the KL reference.

    Args:
        experiment: What to train.
        resume: Continue from the run directory's latest checkpoint.
        force_resume: Resume even when settings that change training differ
            from the checkpoint's (see :class:`~turnrl.training.trainer.Trainer`).

    Returns:
        The trainer's summary plus ``warmstart_s`` and ``run_dir``.

    Raises:
        RunDirError: The run directory is in use, or holds a run and neither
            ``resume`` nor ``run.overwrite`` is set (checked before the warm-start).
        TrainingInterrupted: A SIGINT/SIGTERM stopped training after a checkpoint.
    """
    run = experiment.config.run
    preflight(run.output_dir, resume=resume, overwrite=run.overwrite)
    t0 = time.perf_counter()
    if experiment.config.warmstart is not None and not resume:
        log.info("phase", name="warm-start", steps=experiment.config.warmstart.steps)
        experiment.warmstart()
    warmstart_s = time.perf_counter() - t0
    trainer = experiment.trainer(resume=resume, force_resume=force_resume)
    summary = await trainer.train()
    return summary | {"warmstart_s": warmstart_s, "run_dir": str(trainer.run_dir)}


def find_experiment(target: str | Path, config: str | Path | None = None) -> ExperimentConfig:
    """The experiment behind a run directory, its ``final`` or a checkpoint.

    Args:
        target: What ``turnrl eval`` was given.
        config: An experiment file to use instead of the run's own.

    Raises:
        ValueError: The run was not started from an experiment file (a script
            run) and no ``config`` was given.
    """
    from turnrl.experiment import load_experiment

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
        f"{target}: no experiment config found next to the model (runs started from a Python "
        "script do not record their environment); pass --config EXPERIMENT.yaml"
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
    with tempfile.TemporaryDirectory(prefix="turnrl-eval-") as scratch:
        # The evaluating Trainer's own files (config, metrics) stay out of `out`.
        experiment_config = experiment_config.model_copy(
            update={
                "eval": experiment_config.eval.model_copy(update=patch),
                # The eval needs neither a reference model nor a warm-start.
                "algorithm": experiment_config.algorithm.model_copy(update={"beta": 0.0}),
                "run": experiment_config.run.model_copy(
                    update={"output_dir": scratch, "save_final": False}
                ),
                "wandb": experiment_config.wandb.model_copy(update={"enabled": False}),
            }
        )
        experiment = build_experiment(experiment_config, agent=load_policy(where))
        if not experiment.eval_scenarios:
            raise ValueError(
                "the experiment has no held-out scenarios: add scenarios.eval or "
                "scenarios.eval_fraction to it"
            )
        trainer = experiment.trainer()
        try:
            metrics = await trainer.evaluate()
        finally:
            trainer.metrics.close()
            trainer.close()
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(scratch) / "eval_samples.jsonl", out / "eval_samples.jsonl")
    result = {
        **metrics,
        "scenarios": len(trainer.eval_scenarios),
        "model": str(where),
        "output_dir": str(out),
    }
    (out / "eval_results.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
