"""The training loop: collect -> score -> build -> estimate -> update -> sync -> log.

``Trainer(agent, env, rewards, config)`` owns the optimizer, the frozen
reference model and the run directory; ``await trainer.train()`` runs
``config.run.max_steps`` steps with evaluation on held-out scenarios before,
every ``config.eval.every`` steps, and after training. Each step's numbers go
to ``metrics.jsonl``; the final policy is saved with ``save_pretrained``.

Where each step of :meth:`Trainer.step` lives: collect in :mod:`.rollout`,
score in :mod:`turnrl.rewards` (and :mod:`.groups`, which groups are kept),
build and the no-gradient forward passes in :mod:`.batch` and
:mod:`.scoring`, estimate in :mod:`.estimate`, update in :mod:`.update`, sync
through the agent's :class:`~turnrl.agents.inference.InferenceEngine`, log in
:mod:`turnrl.logging`. The models come from :mod:`.models`, checkpoints from
:mod:`.checkpoint` and :mod:`.resume`. A first SIGINT/SIGTERM lets the current
step finish, writes a checkpoint and raises :class:`TrainingInterrupted`
(see :mod:`.signals`, :mod:`.rundir`).
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from turnrl.agents.base import TrainableAgent
from turnrl.agents.inference import SamplingParams
from turnrl.environments.base import Environment
from turnrl.environments.wrappers import Timeout, TurnLimit
from turnrl.logging import MetricsLogger, NullMetrics, ensure_logging, init_wandb
from turnrl.plots import try_plot_run
from turnrl.progress import Progress
from turnrl.rewards import RewardFunction, score_groups
from turnrl.rewards.combine import as_reward, with_timeout
from turnrl.training import rundir
from turnrl.training.advantages import AdvantageEstimator
from turnrl.training.algorithms import algorithm_for
from turnrl.training.batch import RolloutBatch, build_batch
from turnrl.training.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    save_checkpoint,
    saved_reference,
    step_of,
)
from turnrl.training.config import TrainingConfig
from turnrl.training.distributed import (
    all_agree,
    context_from_env,
    init_process_group,
    mean_metrics,
    shard,
    shutdown,
)
from turnrl.training.errors import NonFiniteError, TrainingInterrupted
from turnrl.training.estimate import estimate
from turnrl.training.estimators import build_estimator
from turnrl.training.groups import check_failures, filter_groups
from turnrl.training.models import build_models, save_pretrained
from turnrl.training.optim import make_optimization
from turnrl.training.perf import StepClock
from turnrl.training.resume import resume_run
from turnrl.training.rollout import check_environment, check_scenarios, collect, rollout_metrics
from turnrl.training.rundir import RunLock
from turnrl.training.signals import StopSignals
from turnrl.training.update import policy_update, score_batch
from turnrl.types import Scenario, TrajectoryGroup, flatten, save_jsonl

log = structlog.get_logger(__name__)

Rewards = RewardFunction | Sequence[Callable] | Mapping[Callable, float] | None


class Trainer:
    """Trains ``agent`` on ``env`` with rewards from ``rewards``.

    Args:
        agent: The policy; its model is updated in place.
        env: Template environment (cloned for every episode).
        rewards: A RewardFunction, a list of functions (weight 1 each), a
            ``{function: weight}`` mapping, or None (environment rewards only).
        config: Training settings (default: the ``balanced`` profile).
        scenarios: Training scenarios (default: ``env.scenarios``).
        eval_scenarios: Held-out scenarios for evaluation (default: none).
        estimator: A custom advantage estimator (a callable
            ``(batch, values=None) -> advantages (N, T)``), overriding
            ``config.algorithm.estimator``; the policy loss is then PPO-clip.
        resume: Continue a run: True for the latest checkpoint in
            ``config.run.output_dir``, or a checkpoint directory. Build the
            trainer from the same starting model and config as the original
            run; the checkpoint restores the weights, the KL reference, the
            optimizer and the random state, so the run continues exactly.
        force_resume: Resume even though settings that change training (lr,
            group size, beta, estimator, seed, model...) differ from the
            checkpoint's; the new values apply from the checkpoint's step on.

    The run directory is held for the Trainer's life (until :meth:`close`,
    which :meth:`train` calls): a second Trainer on it fails with the holder's
    pid. A directory that already holds files is refused unless resuming or
    ``config.run.overwrite`` is set (which removes the old run's files).

    Raises:
        ValueError: No scenarios to train on, an estimator that cannot be
            found, or a setting the machine or model cannot honour (fp16
            without CUDA, max_new_tokens beyond the model's context).
        RunDirError: The run directory is in use, not empty, or not writable.
        CheckpointError: The checkpoint to resume is missing, broken, or was
            written with settings that differ (see ``force_resume``).
    """

    def __init__(
        self,
        agent: TrainableAgent,
        env: Environment,
        rewards: Rewards = None,
        config: TrainingConfig | None = None,
        *,
        scenarios: Sequence[Scenario] | None = None,
        eval_scenarios: Sequence[Scenario] | None = None,
        estimator: AdvantageEstimator | None = None,
        resume: bool | str | Path = False,
        force_resume: bool = False,
    ) -> None:
        ensure_logging()
        # Checked before anything is built or changed, naming the fix.
        env = check_environment(env)
        if scenarios is None:
            scenarios = check_scenarios(env.scenarios, "env.scenarios")
        self.scenarios = list(check_scenarios(scenarios))
        self.eval_scenarios = list(check_scenarios(eval_scenarios or (), "eval_scenarios"))
        self.config = config = config or TrainingConfig.from_profile("balanced")
        if config.eval.max_scenarios is not None:
            self.eval_scenarios = self.eval_scenarios[: config.eval.max_scenarios]
        algorithm = algorithm_for(config.algorithm)
        if estimator is not None and not algorithm.takes_custom_estimator:
            raise ValueError(
                f"estimator=... replaces the advantage estimator of a PPO-clip loss; "
                f"{config.algorithm.estimator!r} has its own loss, so set "
                "config.algorithm.estimator to another kind (e.g. 'grpo')"
            )
        self.dist = context_from_env()
        self._owns_group = self.dist.enabled and not torch.distributed.is_initialized()
        device = init_process_group(self.dist)
        self.agent = agent
        self.models = build_models(
            agent,
            config,
            self.dist,
            device,
            critic=algorithm.critic and estimator is None,
            reference=config.algorithm.uses_reference,
        )
        self.policy, self.ref_model = self.models.policy, self.models.reference
        self.value_model, self.device = self.models.value_model, self.models.device
        if self.dist.enabled:
            shard(range(config.rollout.scenarios_per_step), self.dist)  # B % world == 0
        if config.optim.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("optim.precision='fp16' needs CUDA; use 'bf16' or 'fp32' on CPU")
        rollout = config.rollout
        if rollout.env_timeout_s is not None:
            env = Timeout(env, rollout.env_timeout_s)
        self.env = TurnLimit(env, rollout.max_turns) if rollout.max_turns is not None else env
        self.rewards = with_timeout(as_reward(rewards), rollout.reward_timeout_s)
        self.estimator = estimator or build_estimator(config.algorithm)
        self.optim = make_optimization(self.policy, config, self.value_model)
        self.sampling = self._configure_engine()
        self.run_dir = Path(config.run.output_dir)
        self.step_count = 0
        self.progress = Progress(0, enabled=False)  # train() draws the real one
        self._nonfinite_streak = 0
        self._order: list[int] = []
        self._rng = random.Random(config.run.seed)
        self._reference_file: Path | None = None  # the run's saved reference weights
        self._signals = StopSignals()
        self.resumed_from: Path | None = None
        self._lock = RunLock(self.run_dir)
        try:
            self._open_run_dir(resume, force_resume)
        except BaseException:
            self._lock.release()
            raise

    def _configure_engine(self) -> SamplingParams:
        """Apply ``config.generation`` to the agent's engine; the rollouts' sampling settings."""
        gen = self.config.generation
        _check_context(self.agent.engine.max_context, gen.max_new_tokens)
        self.agent.engine.configure(
            max_batch_size=gen.max_batch_size,
            reuse_kv_cache=gen.reuse_kv_cache,
            weights=gen.weights,
        )
        return SamplingParams(gen.max_new_tokens, gen.temperature, gen.top_p)

    def _open_run_dir(self, resume: bool | str | Path, force_resume: bool) -> None:
        """Lock the run directory, then resume from it or claim it fresh; open the metrics."""
        if self.dist.is_main:  # only rank 0 writes
            self._lock.acquire()
            rundir.clean_stale_temps(checkpoint_dir(self.run_dir))
        if resume:
            self.resumed_from = self._resume(resume, force=force_resume)
        elif self.dist.is_main:
            rundir.claim_fresh(self.run_dir, overwrite=self.config.run.overwrite)
            self.config.save(self.run_dir / "config.json")
        self.metrics: MetricsLogger | NullMetrics = NullMetrics()
        if self.dist.is_main:
            wandb_run = init_wandb(self.config.wandb, self.run_dir, self.config.model_dump())
            self.metrics = MetricsLogger(
                self.run_dir, wandb_run=wandb_run, append=self.resumed_from is not None
            )

    async def train(self) -> dict[str, Any]:
        """Run the configured number of steps.

        Returns:
            ``eval_before``, ``eval_after`` (mean held-out reward, or None
            without eval scenarios), ``steps`` and ``wall_s``.

        Raises:
            TrainingInterrupted: A SIGINT/SIGTERM arrived; training stopped after
                the step in flight, with a checkpoint of it (resume from there).
        """
        if self.resumed_from is None:
            # Ranks sample differently; the scenario order (self._rng) is shared.
            seed_everything(self.config.run.seed + self.dist.rank)
        finished = False
        try:
            with self._signals:
                summary = await self._train()
            finished = True
            return summary
        finally:
            self.close(wait_for_others=finished)

    def close(self, *, wait_for_others: bool = True) -> None:
        """Release the run directory and leave the process group joined under torchrun.

        :meth:`train` calls it. A script that drives :meth:`step` itself should call
        it once every rank is done: a process that exits still holding a gloo group
        can abort at exit. ``wait_for_others=False`` skips the barrier (after an error,
        when other ranks may never reach it).
        """
        self._lock.release()
        if self._owns_group:
            shutdown(wait_for_others=wait_for_others)
            self._owns_group = False

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived (on any rank: every rank stops at the same step)."""
        if not self.dist.enabled:
            return self._signals.received is not None
        return not all_agree(self._signals.received is None, self.dist)

    def _stop(self) -> None:
        """Checkpoint this step (unless just written), draw the plot, raise TrainingInterrupted."""
        checkpoint = latest_checkpoint(self.run_dir) if self.dist.is_main else None
        if self.dist.is_main and (checkpoint is None or step_of(checkpoint) != self.step_count):
            checkpoint = self.save_checkpoint()
        self.metrics.close()
        if self.config.run.plot and self.dist.is_main:
            try_plot_run(self.run_dir)
        signum = self._signals.received or signal.SIGTERM  # a rank told by another rank
        log.warning("stopped", step=self.step_count, checkpoint=str(checkpoint))
        raise TrainingInterrupted(signum, self.step_count, checkpoint)

    async def _train(self) -> dict[str, Any]:
        started = time.perf_counter()
        eval_before = eval_after = None
        run = self.config.run
        self.progress = Progress(
            run.max_steps,
            initial=self.step_count,
            enabled=run.progress if self.dist.is_main else False,
        )
        try:
            if self.eval_scenarios and self.resumed_from is None:
                # .get: when every eval episode failed there is no mean (None, logged).
                eval_before = (await self.evaluate()).get("eval/reward_mean")
                self.metrics.log(self.step_count, {"eval/reward_mean": eval_before})
            while self.step_count < run.max_steps and not self._stop_requested():
                metrics = await self.step()
                every, last = self.config.eval.every, self.step_count == run.max_steps
                if self.eval_scenarios and (last or (every and self.step_count % every == 0)):
                    metrics |= await self.evaluate()
                    eval_after = metrics.get("eval/reward_mean")
                echo = self.step_count % run.log_every == 0 or last
                self.metrics.log(self.step_count, metrics, echo=echo)
                self.progress.step_done(metrics)
                if run.checkpoint_every and (last or self.step_count % run.checkpoint_every == 0):
                    self.save_checkpoint()
        finally:
            self.progress.close()
        if self.step_count < run.max_steps:  # the loop ended early: a stop signal
            self._stop()
        if run.save_final:
            self.save(self.run_dir / "final")
        self.metrics.close()
        if run.plot and self.dist.is_main:
            try_plot_run(self.run_dir)
        summary = {
            "eval_before": eval_before,
            "eval_after": eval_after,
            "steps": self.step_count,
            "wall_s": time.perf_counter() - started,
        }
        if self.dist.is_main:
            log.info("train_done", **summary, run_dir=str(self.run_dir))
        return summary

    async def step(self, groups: Sequence[TrajectoryGroup] | None = None) -> dict[str, Any]:
        """One training step; collects fresh groups unless ``groups`` is given."""
        clock = StepClock(self.agent.engine)
        if groups is None:
            groups = await self.collect_groups()
        clock.rollout_done()
        metrics = await self._score(groups)
        kept, filtered = filter_groups(groups, self.config)
        metrics |= filtered
        self.step_count += 1
        # Every rank must take part in the update's collectives, or none.
        if all_agree(bool(kept), self.dist):
            batch = self.prepare_batch(kept)
            batch, estimated = estimate(batch, self.estimator, self.config, self.dist)
            metrics |= estimated | self._update(batch)
            self._check_nonfinite(metrics)
        else:
            log.warning("step_skipped", step=self.step_count, reason="no group to learn from")
        self._sync_weights()
        metrics |= clock.metrics(self.device)
        return mean_metrics(metrics, self.dist, weight=float(len(flatten(groups))))

    async def _score(self, groups: Sequence[TrajectoryGroup]) -> dict[str, Any]:
        """Reward the groups (those given with rewards keep them) and check the failures."""
        unscored = [g for g in groups if any(t.reward is None for t in g.ok)]
        # self.rewards already carries rollout.reward_timeout_s (with_timeout in __init__).
        metrics: dict[str, Any] = await score_groups(unscored, self.rewards)
        metrics |= rollout_metrics(groups)
        check_failures(groups, self.config.rollout.max_failed_frac, self.step_count + 1)
        return metrics

    def prepare_batch(self, groups: Sequence[TrajectoryGroup]) -> RolloutBatch:
        """The batch an update starts from, without updating.

        ``groups`` tokenized, with the log-probs of the policy and the reference
        and the critic's values (forward passes only, no gradient).
        """
        batch = build_batch(
            groups,
            pad_token_id=self.agent.tokenizer.pad_token_id,
            device=self.device,
            # GAE bootstraps a truncated episode from the value of its real next state.
            encode=self.agent.encode if self.value_model is not None else None,
        )
        return score_batch(self.policy, self.ref_model, self.value_model, batch, self.config)

    def _update(self, batch: RolloutBatch) -> dict[str, float]:
        """The optimizer steps on an estimated batch."""
        return policy_update(
            self.policy,
            batch,
            self.optim,
            self.config,
            value_model=self.value_model,
            seed=self.config.run.seed * 1_000_003 + self.step_count,
            ctx=self.dist,
            wrapped=self.models.wrapped,
            on_micro_batch=lambda done, total: self.progress.phase("update", done, total),
        )

    def _check_nonfinite(self, metrics: dict[str, Any]) -> None:
        """Count updates skipped for a non-finite gradient; too many in a row stop the run."""
        skipped = bool(metrics["train/skipped_nonfinite"])
        self._nonfinite_streak = self._nonfinite_streak + 1 if skipped else 0
        if skipped:
            log.warning("nonfinite_gradient", step=self.step_count, action="update skipped")
        if self._nonfinite_streak >= self.config.optim.max_nonfinite_steps:
            raise NonFiniteError(
                f"{self._nonfinite_streak} steps in a row (up to step {self.step_count}) had "
                "a non-finite loss or gradient and were skipped; the weights are those of "
                f"step {self.step_count - self._nonfinite_streak}. Lower optim.lr, check the "
                "rewards for NaN/inf, or use precision='fp32'"
            )

    def _sync_weights(self) -> None:
        """Hand the updated policy to the engine as version ``step_count``.

        Only trainable tensors are sent (LoRA: the adapters), lazily: an engine
        that shares the policy's parameters never reads them, so this costs nothing.
        """
        trainable = ((n, p.detach()) for n, p in self.policy.named_parameters() if p.requires_grad)
        self.agent.engine.update_weights(trainable, self.step_count)

    async def collect_groups(self) -> list[TrajectoryGroup]:
        """Roll out the next B training scenarios, G episodes each (no update)."""
        try:
            return await collect(
                self.agent,
                self.env,
                self._next_scenarios(),
                self.config.rollout.num_generations,
                max_concurrency=self.config.rollout.max_concurrency,
                seed=self.config.run.seed * 1_000_003 + self.step_count * 10_007,
                sampling=self.sampling,
                on_episode=lambda done, total: self.progress.phase("rollout", done, total),
            )
        finally:  # the episodes are over: their KV caches would only hold memory
            self.agent.engine.release_cache()

    async def evaluate(
        self, scenarios: Sequence[Scenario] | None = None, *, save_samples: bool = True
    ) -> dict[str, float]:
        """Mean reward on held-out scenarios (``eval/*`` metrics).

        With several processes each rank plays its share of the scenarios and
        the metrics are averaged over all episodes; ``eval_samples.jsonl``
        holds rank 0's share.
        """
        scenarios = list(scenarios if scenarios is not None else self.eval_scenarios)
        if not scenarios:
            raise ValueError("no evaluation scenarios")
        scenarios = scenarios[self.dist.rank :: self.dist.world_size]
        ev = self.config.eval
        greedy = ev.temperature == 0
        sampling = SamplingParams(
            self.sampling.max_new_tokens, ev.temperature, 1.0 if greedy else self.sampling.top_p
        )
        try:
            groups = await collect(
                self.agent,
                self.env,
                scenarios,
                1 if greedy else ev.num_generations,
                max_concurrency=self.config.rollout.max_concurrency,
                seed=10**9 + self.config.run.seed,
                sampling=sampling,
                on_episode=lambda done, total: self.progress.phase("eval", done, total),
            )
        finally:
            self.agent.engine.release_cache()
        await score_groups(groups, self.rewards)
        if save_samples and self.dist.is_main:
            save_jsonl(flatten(groups), self.run_dir / "eval_samples.jsonl")
            self.metrics.log_samples(self.step_count, flatten(groups), table="eval/samples")
        metrics = rollout_metrics(groups, prefix="eval")
        return mean_metrics(metrics, self.dist, weight=float(len(flatten(groups))))

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint of this step (rank 0; see :mod:`.checkpoint`)."""
        if not self.dist.is_main:
            return None
        path = save_checkpoint(
            self.run_dir,
            self.models,
            self.optim,
            self.config,
            self.state_dict(),
            keep=self.config.run.keep_checkpoints,
            reference_file=self._reference_file,
        )
        self._reference_file = saved_reference(path, self.models)
        log.info("checkpoint_saved", step=self.step_count, path=str(path))
        return path

    def state_dict(self) -> dict[str, Any]:
        """The loop's own state: the step count and the position in the scenario order.

        The models, optimizer and random generators are saved beside it by
        :func:`~turnrl.training.checkpoint.save_checkpoint`.
        """
        return {
            "step": self.step_count,
            "order": list(self._order),
            "order_rng": self._rng.getstate(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.step_count = state["step"]
        self._order = list(state["order"])
        self._rng.setstate(state["order_rng"])

    def _resume(self, resume: bool | str | Path, *, force: bool) -> Path:
        """Restore a checkpoint (see :func:`~turnrl.training.resume.resume_run`) and sync it."""
        path, state = resume_run(
            self.run_dir,
            resume,
            self.config,
            self.models,
            self.optim,
            is_main=self.dist.is_main,
            force=force,
        )
        self.load_state_dict(state)
        self._reference_file = saved_reference(path, self.models)
        self.agent.engine.update_weights(self.policy.state_dict(), self.step_count)  # all weights
        return path

    def save(self, path: str | Path, *, merge: bool = False) -> Path:
        """``save_pretrained`` the policy and tokenizer (and the value model) into ``path``.

        With LoRA this stores the adapter (load it with peft on top of the base
        model), or with ``merge=True`` a plain model with the adapters merged
        in, loadable with ``AutoModelForCausalLM.from_pretrained``. With several
        processes only rank 0 writes.
        """
        path = Path(path)
        if self.dist.is_main:
            save_pretrained(self.models, self.agent.tokenizer, path, merge=merge)
        return path

    def _next_scenarios(self) -> list[Scenario]:
        """B scenarios, walking through shuffled epochs of the training set."""
        picked = []
        for _ in range(self.config.rollout.scenarios_per_step):
            if not self._order:
                self._order = list(range(len(self.scenarios)))
                self._rng.shuffle(self._order)
            picked.append(self.scenarios[self._order.pop()])
        return shard(picked, self.dist) if self.dist.enabled else picked


def _check_context(max_context: int | None, max_new_tokens: int) -> None:
    """Refuse a ``max_new_tokens`` that leaves no room for a prompt in the model's context."""
    if max_context is not None and max_new_tokens >= max_context:
        raise ValueError(
            f"generation.max_new_tokens={max_new_tokens} does not fit the model's context of "
            f"{max_context} tokens, which also holds the prompt; set it well below {max_context}"
        )


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
