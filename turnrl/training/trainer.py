"""The training loop: collect -> score -> build -> estimate -> update -> sync -> log.

Each step of :meth:`Trainer.step` lives in a module named for it: collect in
:mod:`.rollout`, score in :mod:`turnrl.rewards` and :mod:`.groups`, build in
:mod:`.batch` (with the no-gradient forward passes of :func:`.update.logprobs_and_values`),
estimate in :mod:`.estimate`, update in :mod:`.update`, sync through the agent's
:class:`~turnrl.agents.inference.InferenceEngine`, log in :mod:`turnrl.logging`.
The models come from :mod:`.models`; the run directory, checkpoints and resume
from :mod:`.run_files`; a first SIGINT/SIGTERM ends the run after the step in
flight with a checkpoint (:mod:`.signals`). The progress bar, periodic checkpoints,
early stopping, the best model and user code run as callbacks (:mod:`.callbacks`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import torch

from turnrl.agents.base import TrainableAgent
from turnrl.environments.base import Environment
from turnrl.logging import ensure_logging
from turnrl.progress import Progress
from turnrl.rewards.combine import RewardsArg, as_reward, with_timeout
from turnrl.training.advantages import AdvantageEstimator
from turnrl.training.algorithms import algorithm_for, check_custom_estimator
from turnrl.training.batch import RolloutBatch, build_batch
from turnrl.training.callbacks import Callback, TrainerControl, trainer_callbacks
from turnrl.training.chat_template import check_template
from turnrl.training.config import TrainingConfig
from turnrl.training.distributed import (
    all_agree,
    all_sum,
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
from turnrl.training.evaluation import EvalReport, eval_metrics, play_and_score
from turnrl.training.groups import filter_groups, score_step
from turnrl.training.models import build_models, run_config, save_pretrained, sync_weights
from turnrl.training.optim import make_optimization
from turnrl.training.perf import StepClock
from turnrl.training.rollout import (
    ScenarioOrder,
    check_environment,
    check_scenarios,
    collect,
    configure_engine,
    with_limits,
)
from turnrl.training.run_files import RunFiles
from turnrl.training.signals import StopSignals
from turnrl.training.update import logprobs_and_values, policy_update
from turnrl.types import Scenario, TrajectoryGroup, flatten

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
        callbacks: :class:`~turnrl.training.callbacks.Callback` instances that
            :meth:`train` runs after the built-in progress bar, early stopping
            and best model, before the checkpoint writer (:mod:`.callbacks`).

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
        callbacks: Iterable[Callback] = (),
    ) -> None:
        ensure_logging()
        # Checked before anything is built or changed, naming the fix.
        env = check_environment(env)
        if scenarios is None:
            scenarios = check_scenarios(env.scenarios, "env.scenarios")
        self.scenarios = check_scenarios(scenarios, required=True)
        self.eval_scenarios = list(check_scenarios(eval_scenarios or (), "eval_scenarios"))
        self.config = config = run_config(config or TrainingConfig.from_profile(), agent)
        self.template = check_template(agent, env)  # a template it cannot use fails here
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
        self.control, self.evals = TrainerControl(), EvalReport(config.eval)
        self.callbacks = trainer_callbacks(self, callbacks)  # checked before files are touched
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
            ``eval_metric`` (``eval.metric``'s key), ``eval_before`` and
            ``eval_after`` (its value before training and at the last
            evaluation, None without eval scenarios) with their ``_stderr``,
            ``steps``, ``wall_s`` and ``stopped_by`` (a callback's reason, or None).

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

        :meth:`train` calls it; a script driving :meth:`step` calls it once every rank is
        done (a process exiting in a gloo group can abort). ``wait_for_others=False``
        skips the barrier (after an error, when other ranks may never reach it).
        """
        self.files.release()
        if self._owns_group:
            shutdown(wait_for_others=wait_for_others)
            self._owns_group = False

    def _should_stop(self) -> bool:
        """Whether a callback asked to stop (on any rank); a stop signal raises in :meth:`_stop`."""
        signalled, asked = all_sum(
            [self._signals.received is not None, self.control.should_stop], self.dist
        )
        if signalled:
            self._stop()
        return bool(asked)

    def _stop(self) -> None:
        """Checkpoint this step (unless just written), draw the plot, raise TrainingInterrupted."""
        checkpoint = self.save_checkpoint()
        self.files.finish()
        signum = self._signals.received or signal.SIGTERM  # a rank told by another rank
        log.warning("stopped", step=self.step_count, checkpoint=str(checkpoint))
        raise TrainingInterrupted(signum, self.step_count, checkpoint)

    async def _train(self) -> dict[str, Any]:
        started = time.perf_counter()
        run, self.control = self.config.run, TrainerControl()
        self.callbacks.fire("on_train_begin", self)
        try:
            if self.eval_scenarios and self.resumed_from is None:
                self.metrics.log(self.step_count, await self._evaluate_in_run(before=True))
            while self.step_count < run.max_steps and not self._should_stop():
                metrics = await self.step()
                every, last = self.config.eval.every, self.step_count == run.max_steps
                if self.eval_scenarios and (last or (every and self.step_count % every == 0)):
                    metrics |= await self._evaluate_in_run()
                echo = self.step_count % run.log_every == 0 or last
                self.metrics.log(self.step_count, metrics, echo=echo)
                self.callbacks.fire("on_step_end", self, metrics)
            if self.eval_scenarios and self.evals.last_step != self.step_count:
                self.metrics.log(self.step_count, await self._evaluate_in_run())  # stopped early
        finally:
            self.progress.close()
        if run.save_final:
            self.save(self.run_dir / "final")
        summary = {
            **self.evals.summary(),
            "steps": self.step_count,
            "wall_s": time.perf_counter() - started,
            "stopped_by": self.control.reason,
        }
        self.callbacks.fire("on_train_end", self, summary)
        self.files.finish()
        if self.dist.is_main:
            log.info("train_done", **summary, run_dir=str(self.run_dir))
        return summary

    async def _evaluate_in_run(self, *, before: bool = False) -> dict[str, Any]:
        """Evaluate, keep ``eval.metric`` for the summary, and run ``on_evaluate``."""
        metrics = await self.evaluate()
        self.evals.record(self.step_count, metrics, before=before)
        self.callbacks.fire("on_evaluate", self, metrics)
        return metrics

    async def step(self, groups: Sequence[TrajectoryGroup] | None = None) -> dict[str, Any]:
        """One training step; collects fresh groups unless ``groups`` is given."""
        clock = StepClock(self.agent.engine)
        if groups is None:
            groups = await self.collect_groups()
        clock.rollout_done()
        # self.rewards already carries rollout.reward_timeout_s (with_timeout in __init__).
        metrics = await score_step(groups, self.rewards, self.config, self.step_count + 1)
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
        sync_weights(self.policy, self.agent.engine, self.step_count)
        metrics |= clock.metrics(self.device)
        return mean_metrics(metrics, self.dist, weight=float(len(flatten(groups))))

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
        """Mean reward on held-out scenarios (``eval/*`` metrics, with ``_stderr``).

        With several processes each rank plays its share of the scenarios and
        the metrics are averaged over all episodes; ``eval_samples.jsonl``
        holds rank 0's share. See :mod:`.evaluation` for the standard errors.
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
        if save_samples:
            self.files.save_eval_samples(self.step_count, flatten(groups))
        return eval_metrics(groups, self.dist)

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint of this step (rank 0; see :mod:`.checkpoint`).

        A step is written once: if the latest checkpoint holds it, that one is returned.
        """
        if (path := self.files.checkpoint_of(self.step_count)) is not None:
            return path
        path = self.files.save_checkpoint(self.models, self.optim, self.state_dict())
        if path is not None:
            log.info("checkpoint_saved", step=self.step_count, path=str(path))
            self.callbacks.fire("on_save", self, path)
        return path

    def state_dict(self) -> dict[str, Any]:
        """The loop's own state: the step, the scenario order's position, the callbacks'.

        The models, optimizer and random generators are saved beside it by
        :func:`~turnrl.training.checkpoint.save_checkpoint`.
        """
        return {
            "step": self.step_count,
            **self.order.state_dict(),
            "callbacks": self.callbacks.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.step_count = state["step"]
        self.order.load_state_dict(state)
        self.callbacks.load_state_dict(state.get("callbacks", {}))

    def save(self, path: str | Path, *, merge: bool = False) -> Path:
        """``save_pretrained`` the policy and tokenizer (and the value model) into ``path``.

        With LoRA the adapter, or with ``merge=True`` a plain model (see
        :func:`.models.save_pretrained`). With several processes only rank 0 writes.
        """
        path = Path(path)
        if self.dist.is_main:
            save_pretrained(self.models, self.agent.tokenizer, path, merge=merge)
        return path
