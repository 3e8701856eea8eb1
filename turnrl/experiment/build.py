"""An experiment built from its config and run: :class:`Experiment`, :func:`build_experiment`.

:func:`build_experiment` turns an :class:`~turnrl.experiment.config.ExperimentConfig`
into an :class:`Experiment`: the policy (:func:`load_agent`) and the parts its
sections name (built by :mod:`turnrl.experiment.parts`). ``Experiment.run()`` is
what ``turnrl train`` runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from turnrl.agents.engine import SamplingParams
from turnrl.agents.tiny import tiny_model_path
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.base import Environment
from turnrl.experiment.config import (
    ExperimentConfig,
    load_experiment,
)
from turnrl.experiment.parts import (
    build_demonstrations,
    build_environment,
    build_rewards,
    build_scenarios,
)
from turnrl.imports import import_dirs
from turnrl.rewards.base import RewardFunction
from turnrl.training.config import TrainingConfig
from turnrl.training.distributed import seed_everything
from turnrl.training.rundir import preflight
from turnrl.types import Message, Scenario

__all__ = [
    "Experiment",
    "build_environment",
    "build_experiment",
    "build_rewards",
    "build_scenarios",
    "load_agent",
]

log = structlog.get_logger(__name__)


class Experiment:
    """The parts an experiment file describes, built and ready to train.

    A script runs an experiment file exactly as ``turnrl train`` does::

        experiment = Experiment.from_yaml("experiment.yaml", overrides=["run.max_steps=20"])
        summary = await experiment.run()  # warm-start (if configured), train, plot

    and ``experiment.config.to_yaml(path)`` (or ``trainer.config.to_yaml``)
    writes the file back.

    Attributes:
        config: The experiment config.
        agent: The policy.
        env: The environment (holding the training scenarios).
        rewards: ``{reward function: weight}`` (empty: environment rewards only).
        train_scenarios: Scenarios to train on.
        eval_scenarios: Held-out scenarios (may be empty).
        demonstrations: Warm-start conversations (empty without ``warmstart``).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        agent: TransformersAgent,
        env: Environment,
        rewards: dict[RewardFunction, float],
        train_scenarios: list[Scenario],
        eval_scenarios: list[Scenario],
        demonstrations: list[list[Message]],
    ) -> None:
        self.config = config
        self.agent = agent
        self.env = env
        self.rewards = rewards
        self.train_scenarios = train_scenarios
        self.eval_scenarios = eval_scenarios
        self.demonstrations = demonstrations

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        *,
        profile: str | None = None,
        overrides: Sequence[str] = (),
        agent: TransformersAgent | None = None,
    ) -> Experiment:
        """Read an experiment file (YAML or JSON) and build it, as ``turnrl train`` does.

        Args:
            path: The file.
            profile: Profile overriding the file's (``--profile``).
            overrides: ``"a.b=value"`` strings, as ``--set`` takes them.
            agent: A policy to use instead of loading ``model.path``.

        Raises:
            FileNotFoundError: No such file, or a model or data file it names.
            ValueError: Settings that fail validation, or a part that cannot be
                built (see :func:`load_experiment` and :func:`build_experiment`).
        """
        config = load_experiment(path, profile=profile, overrides=overrides)
        return build_experiment(config, agent=agent)

    @classmethod
    def from_config(
        cls, config: ExperimentConfig, *, agent: TransformersAgent | None = None
    ) -> Experiment:
        """Build an experiment a script wrote as an :class:`ExperimentConfig`.

        The same as :func:`build_experiment`; ``config.to_yaml(path)`` gives
        the file that ``turnrl train`` runs the same way.
        """
        return build_experiment(config, agent=agent)

    async def run(self, *, resume: bool = False, force_resume: bool = False) -> dict[str, Any]:
        """Warm-start (when configured and not resuming), then train: ``turnrl train``.

        A fresh run first seeds every random generator with ``run.seed``, so
        what the Trainer draws when it is built (LoRA adapters, a critic's
        head) is the same in every process and every spelling of the run. A
        resumed run skips the warm-start: its checkpoint holds the warm-started
        weights, the KL reference and the generators.

        Args:
            resume: Continue from the run directory's latest checkpoint.
            force_resume: Resume even when settings that change training differ
                from the checkpoint's (see :class:`~turnrl.training.trainer.Trainer`).

        Returns:
            The trainer's summary (``wall_s``: the RL loop with its evaluations,
            ``train_done``'s) plus ``warmstart_s`` (``warmstart_done``'s ``wall_s``;
            0 without a warm-start), ``total_s`` (both, with building the trainer,
            loading a checkpoint and saving) and ``run_dir``.

        Raises:
            RunDirError: The run directory is in use, or holds a run and neither
                ``resume`` nor ``run.overwrite`` is set (checked before the warm-start).
            TrainingInterrupted: A SIGINT/SIGTERM stopped training after a checkpoint.
        """
        run = self.config.run
        preflight(run.output_dir, resume=resume, overwrite=run.overwrite)
        if not resume:
            seed_everything(run.seed)
        started = time.perf_counter()
        warmstart_s = 0.0
        spec = self.config.warmstart
        if spec is not None and not resume:
            log.info("phase", name="warm-start", steps=spec.steps)
            losses = self.warmstart()
            warmstart_s = time.perf_counter() - started
            loss = round(losses[-1], 4) if losses else None
            log.info("warmstart_done", steps=len(losses), loss=loss, wall_s=round(warmstart_s, 1))
        trainer = self.trainer(resume=resume, force_resume=force_resume)
        summary = await trainer.train()
        return summary | {
            "warmstart_s": warmstart_s,
            "total_s": time.perf_counter() - started,
            "run_dir": str(trainer.run_dir),
        }

    def trainer(self, **kwargs: Any) -> Any:
        """A :class:`~turnrl.training.trainer.Trainer` over these parts."""
        from turnrl.training.trainer import Trainer

        with import_dirs(self.config.base_dir):  # an algorithm.estimator beside the file
            return Trainer(
                self.agent,
                self.env,
                self.rewards or None,
                self.config,
                scenarios=self.train_scenarios,
                eval_scenarios=self.eval_scenarios,
                **kwargs,
            )

    def warmstart(self) -> list[float]:
        """Run the supervised warm-start, if configured; returns its losses."""
        spec = self.config.warmstart
        if spec is None:
            return []
        from turnrl.training.sft import supervised_warmstart

        return supervised_warmstart(
            self.agent,
            self.demonstrations,
            steps=spec.steps,
            lr=spec.lr,
            batch_size=spec.batch_size,
            seed=self.config.run.seed,
            train_on=spec.train_on,
            max_grad_norm=spec.max_grad_norm,
        )


def build_experiment(
    config: ExperimentConfig, *, agent: TransformersAgent | None = None
) -> Experiment:
    """Load the model and build the environment, scenarios and rewards.

    Args:
        config: The experiment.
        agent: A policy to use instead of loading ``config.model.path``.

    Raises:
        ValueError: An import path that does not resolve, an object that is
            not what its section needs, or scenarios that cannot be loaded.
        FileNotFoundError: The model path or a data file does not exist.
    """
    env, train, held_out = build_environment(config)
    rewards = build_rewards(config)
    demos = []
    if config.warmstart is not None:
        with import_dirs(config.base_dir):
            demos = build_demonstrations(config.warmstart, train, config.base_dir)
    if agent is None:
        agent = load_agent(config)
    return Experiment(config, agent, env, rewards, train, held_out, demos)


def load_agent(config: TrainingConfig) -> TransformersAgent:
    """The policy named by ``config.model`` (the embedded tiny model when ``path`` is None)."""
    path = config.model.path if config.model.path is not None else tiny_model_path()
    return TransformersAgent.from_pretrained(
        path,
        dtype=config.model.dtype,
        chat_template_kwargs=config.model.chat_template_kwargs,
        sampling=SamplingParams(
            config.generation.max_new_tokens, config.generation.temperature, config.generation.top_p
        ),
    )
