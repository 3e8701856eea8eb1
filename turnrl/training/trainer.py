"""The training loop: collect -> score -> build -> estimate -> update -> sync -> log.

Each step of :meth:`Trainer.step` lives in a module named for it: collect in
:mod:`.rollout`, score in :mod:`turnrl.rewards` and :mod:`.groups`, build in
:mod:`.batch` (with the no-gradient forward passes of :func:`.update.logprobs_and_values`),
estimate in :mod:`.estimate`, update in :mod:`.update`, sync through the agent's
:class:`~turnrl.agents.inference.InferenceEngine`, log in :mod:`turnrl.logging`.
The models come from :mod:`.models`; the run directory, checkpoints and resume
from :mod:`.run_files`; a first SIGINT/SIGTERM ends the run after the step in
flight with a checkpoint (:mod:`.signals`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import torch

from turnrl.agents.base import TrainableAgent
from turnrl.environments.base import Environment
from turnrl.logging import ensure_logging
from turnrl.progress import Progress
from turnrl.rewards import score_groups
from turnrl.rewards.combine import RewardsArg, as_reward, with_timeout
from turnrl.training.advantages import AdvantageEstimator
from turnrl.training.algorithms import algorithm_for, check_custom_estimator
from turnrl.training.auto_lr import resolve_lr
from turnrl.training.batch import RolloutBatch, build_batch
from turnrl.training.config import TrainingConfig
from turnrl.training.distributed import (
    all_agree,
    context_from_env,
    init_process_group,
    mean_metrics,
    seed_everything,
    shard,
    shutdown,
)
from turnrl.training.errors import NonFiniteStreak, TrainingInterrupted
from turnrl.training.estimate import estimate
from turnrl.training.estimators import build_estimator
from turnrl.training.evaluation import play_and_score
from turnrl.training.generation import resolve_generation
from turnrl.training.groups import check_failures, filter_groups
from turnrl.training.models import build_models, record_model, save_pretrained
from turnrl.training.optim import make_optimization
from turnrl.training.perf import StepClock
from turnrl.training.rollout import (
    ScenarioOrder,
    check_environment,
    check_scenarios,
    collect,
    configure_engine,
    rollout_metrics,
    with_limits,
)
from turnrl.training.run_files import RunFiles
from turnrl.training.signals import StopSignals
from turnrl.training.update import logprobs_and_values, policy_update
from turnrl.types import Scenario, TrajectoryGroup, flatten, save_jsonl

log = structlog.get_logger(__name__)


class Trainer:
    """Trains ``agent`` on ``env`` with rewards from ``rewards``.

    Args:
        agent: The policy; its model is updated in place.
        env: Template environment (cloned for every episode).
        rewards: A RewardFunction, a list of functions (weight 1 each), a
            ``{function: weight}`` mapping, or None (environment rewards only).
        config: Training settings (default: ``balanced``; sampling rule: :mod:`.generation`).
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

    The run directory is locked until :meth:`close` (which :meth:`train`
    calls); one that holds files is refused unless resuming or with
    ``config.run.overwrite`` (which removes the old run's files).

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
        rewards: RewardsArg = None,
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
        self.scenarios = check_scenarios(scenarios, required=True)
        self.eval_scenarios = list(check_scenarios(eval_scenarios or (), "eval_scenarios"))
        config = resolve_generation(config or TrainingConfig.from_profile(), agent)
        self.config = config = record_model(config, agent)
        self.config = config = resolve_lr(config, agent.model)  # optim.lr: auto
        if config.eval.max_scenarios is not None:
            self.eval_scenarios = self.eval_scenarios[: config.eval.max_scenarios]
        algorithm = algorithm_for(config.algorithm)
        if estimator is not None:
            check_custom_estimator(config.algorithm)
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
        self.env = with_limits(env, config.rollout)
        self.rewards = with_timeout(as_reward(rewards), config.rollout.reward_timeout_s)
        self.estimator = estimator or build_estimator(config.algorithm)
        self.optim = make_optimization(self.policy, config, self.value_model)
        self.sampling = configure_engine(agent.engine, config.generation)
        self.step_count = 0
        self.progress = Progress(0, enabled=False)  # train() draws the real one
        self._nonfinite = NonFiniteStreak(config.optim.max_nonfinite_steps)
        self.order = ScenarioOrder(self.scenarios, config.run.seed)
        self._signals = StopSignals()
        self.files = RunFiles(config, is_main=self.dist.is_main)
        self.run_dir = self.files.path
        state = self.files.open(resume, self.models, self.optim, force_resume=force_resume)
        self.metrics, self.resumed_from = self.files.metrics, self.files.resumed_from
        if state is not None:
            self.load_state_dict(state)
            self.agent.engine.update_weights(self.policy.state_dict(), self.step_count)

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
            # Ranks sample differently; the scenario order (self.order) is shared.
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
        self.files.release()
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
        checkpoint = self.files.checkpoint_of(self.step_count) or self.save_checkpoint()
        self.files.finish()
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
        self.files.finish()
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
            self._nonfinite.update(bool(metrics["train/skipped_nonfinite"]), self.step_count)
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
        """``groups`` tokenized, with the policy's and the reference's log-probs and the
        critic's values (forward passes without gradient): what an update starts from."""
        batch = build_batch(
            groups,
            pad_token_id=self.agent.tokenizer.pad_token_id,
            device=self.device,
            # GAE bootstraps a truncated episode from the value of its real next state.
            encode=self.agent.encode if self.value_model is not None else None,
        )
        return logprobs_and_values(
            self.policy, self.ref_model, self.value_model, batch, self.config
        )

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

    def _sync_weights(self) -> None:
        """Hand the updated policy to the engine as version ``step_count``.

        Only trainable tensors are sent (LoRA: the adapters), lazily: an engine
        that shares the policy's parameters never reads them, so this costs nothing.
        """
        trainable = ((n, p.detach()) for n, p in self.policy.named_parameters() if p.requires_grad)
        self.agent.engine.update_weights(trainable, self.step_count)

    async def collect_groups(self) -> list[TrajectoryGroup]:
        """Roll out the next B training scenarios, G episodes each (no update)."""
        scenarios = self.order.take(self.config.rollout.scenarios_per_step)
        try:
            return await collect(
                self.agent,
                self.env,
                shard(scenarios, self.dist) if self.dist.enabled else scenarios,
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
        groups = await play_and_score(
            self.agent,
            self.env,
            self.eval_scenarios if scenarios is None else scenarios,
            self.rewards,
            self.config,
            self.dist,
            on_episode=lambda done, total: self.progress.phase("eval", done, total),
        )
        if save_samples and self.dist.is_main:
            save_jsonl(flatten(groups), self.run_dir / "eval_samples.jsonl")
            self.metrics.log_samples(self.step_count, flatten(groups), table="eval/samples")
        metrics = rollout_metrics(groups, prefix="eval")
        return mean_metrics(metrics, self.dist, weight=float(len(flatten(groups))))

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint of this step (rank 0; see :mod:`.checkpoint`)."""
        path = self.files.save_checkpoint(self.models, self.optim, self.state_dict())
        if path is not None:
            log.info("checkpoint_saved", step=self.step_count, path=str(path))
        return path

    def state_dict(self) -> dict[str, Any]:
        """The loop's own state: the step count and the position in the scenario order.

        The models, optimizer and random generators are saved beside it by
        :func:`~turnrl.training.checkpoint.save_checkpoint`.
        """
        return {"step": self.step_count, **self.order.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.step_count = state["step"]
        self.order.load_state_dict(state)

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
