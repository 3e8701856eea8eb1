"""The training loop: collect -> score -> build -> estimate -> update -> sync -> log.

``Trainer(agent, env, rewards, config)`` owns the optimizer, the frozen
reference model and the run directory; ``await trainer.train()`` runs
``config.run.max_steps`` steps with evaluation on held-out scenarios before,
every ``config.eval.every`` steps, and after training. Each step's numbers go
to ``metrics.jsonl``; the final policy is saved with ``save_pretrained``. The
trainer reaches generation only through the agent's
:class:`~turnrl.agents.inference.InferenceEngine`, which it syncs after each
update (:meth:`Trainer._sync_weights`). A
first SIGINT/SIGTERM lets the current step finish, writes a checkpoint and
raises :class:`TrainingInterrupted` (see :mod:`.signals`, :mod:`.rundir`).
"""

from __future__ import annotations

import copy
import json
import random
import resource
import signal
import time
from collections import Counter
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
from turnrl.logging import MetricsLogger, ensure_logging
from turnrl.plots import plot_run
from turnrl.progress import Progress
from turnrl.rewards import RewardFunction, combine, score_groups
from turnrl.rewards.combine import with_timeout
from turnrl.training import rundir
from turnrl.training.advantages import AdvantageEstimator
from turnrl.training.batch import RolloutBatch, build_batch
from turnrl.training.checkpoint import (
    CheckpointError,
    apply_optim_settings,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
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
from turnrl.training.estimators import build_estimator
from turnrl.training.lora import AdapterDisabledReference, add_lora, is_peft_model, merged_copy
from turnrl.training.rollout import check_environment, check_scenarios, collect, rollout_metrics
from turnrl.training.rundir import RunLock
from turnrl.training.signals import StopSignals
from turnrl.training.update import estimate, make_optimization, policy_update, score_batch
from turnrl.training.value import ValueModel
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
        scenarios = check_scenarios(scenarios)
        eval_scenarios = check_scenarios(eval_scenarios or (), "eval_scenarios")
        self.config = config or TrainingConfig.from_profile("balanced")
        self.dist = context_from_env()
        self._owns_group = self.dist.enabled and not torch.distributed.is_initialized()
        device = init_process_group(self.dist)
        self.agent = agent
        lora = self.config.model.lora
        if lora is not None and not is_peft_model(agent.model):
            agent.model = add_lora(agent.model, lora)  # the agent hands it to its engine
        self.policy = agent.model
        if self.dist.enabled and device.type == "cuda":
            self.policy.to(device)
        self.device = next(self.policy.parameters()).device
        if self.dist.enabled:
            shard(range(self.config.rollout.scenarios_per_step), self.dist)  # B % world == 0
        self.scenarios = list(scenarios if scenarios is not None else getattr(env, "scenarios", ()))
        if not self.scenarios:
            raise ValueError(
                "no training scenarios: pass scenarios=[...] to Trainer or give the environment "
                "a non-empty `scenarios` list"
            )
        self.eval_scenarios = list(eval_scenarios or ())
        if self.config.eval.max_scenarios is not None:
            self.eval_scenarios = self.eval_scenarios[: self.config.eval.max_scenarios]
        if self.config.optim.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("optim.precision='fp16' needs CUDA; use 'bf16' or 'fp32' on CPU")
        rollout = self.config.rollout
        if rollout.env_timeout_s is not None:
            env = Timeout(env, rollout.env_timeout_s)
        self.env = TurnLimit(env, rollout.max_turns) if rollout.max_turns is not None else env
        self.rewards = with_timeout(_as_reward(rewards), rollout.reward_timeout_s)
        algo = self.config.algorithm
        if estimator is not None and algo.estimator == "gvpo":
            raise ValueError(
                "estimator=... replaces the advantage estimator of a PPO-clip loss; GVPO has its "
                "own loss, so set config.algorithm.estimator to another kind (e.g. 'grpo')"
            )
        self.estimator = estimator or build_estimator(algo)
        self.value_model = None
        if algo.estimator == "gae" and estimator is None:
            self.value_model = ValueModel(self.policy, separate=algo.critic == "separate")
        # DDP broadcasts rank 0's weights when it wraps a module, so the reference
        # copy is taken afterwards: every rank holds the same one.
        self.wrapped = (self.policy, self.value_model)
        if self.dist.enabled:
            self.wrapped = (_ddp(self.policy, device), _ddp(self.value_model, device))
        self.ref_model: Any = None
        if algo.uses_reference and is_peft_model(self.policy):
            self.ref_model = AdapterDisabledReference(self.policy)  # no second copy
        elif algo.uses_reference:
            self.ref_model = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.optim = make_optimization(self.policy, self.config, self.value_model)
        gen = self.config.generation
        _check_context(agent.engine.max_context, gen.max_new_tokens)
        self.sampling = SamplingParams(gen.max_new_tokens, gen.temperature, gen.top_p)
        agent.engine.configure(
            max_batch_size=gen.max_batch_size,
            reuse_kv_cache=gen.reuse_kv_cache,
            weights=gen.weights,
        )
        self.run_dir = Path(self.config.run.output_dir)
        self.step_count = 0
        self.progress = Progress(0, enabled=False)  # train() draws the real one
        self._nonfinite_streak = 0
        self._order: list[int] = []
        self._rng = random.Random(self.config.run.seed)
        self._reference_file: Path | None = None  # the run's saved reference weights
        self._signals = StopSignals()
        self.resumed_from: Path | None = None
        self._lock = RunLock(self.run_dir)
        try:
            if self.dist.is_main:  # only rank 0 writes
                self._lock.acquire()
                rundir.clean_stale_temps(checkpoint_dir(self.run_dir))
            if resume:
                self.resumed_from = self._resume(resume, force=force_resume)
            elif self.dist.is_main:
                rundir.claim_fresh(self.run_dir, overwrite=self.config.run.overwrite)
                self.config.save(self.run_dir / "config.json")
            if self.dist.is_main:
                self.metrics: MetricsLogger | _NoMetrics = MetricsLogger(
                    self.run_dir,
                    wandb_run=self._init_wandb(),
                    append=self.resumed_from is not None,
                )
            else:
                self.metrics = _NoMetrics()
        except BaseException:
            self._lock.release()
            raise

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
            self._plot()
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
            self._plot()
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
        t0 = time.perf_counter()
        calls0, tokens0 = self.agent.engine.stats.generate_calls, self._generated_tokens()
        generate0 = self.agent.engine.stats.generate_s
        if groups is None:
            groups = await self.collect_groups()
        t1 = time.perf_counter()
        # Groups given with their rewards (replayed, off-policy) keep them.
        unscored = [g for g in groups if any(t.reward is None for t in g.ok)]
        # self.rewards already carries rollout.reward_timeout_s (with_timeout in __init__).
        metrics: dict[str, Any] = await score_groups(unscored, self.rewards)
        metrics |= rollout_metrics(groups)
        _check_failures(groups, self.config.rollout.max_failed_frac, self.step_count + 1)
        kept = [g for g in groups if len(g.ok) >= self.config.rollout.min_group_size]
        metrics["rollout/groups_dropped"] = float(len(groups) - len(kept))
        metrics["rollout/frac_zero_std"] = _frac_zero_std(kept)
        if self.config.algorithm.skip_tied_groups:
            kept = [g for g in kept if not _tied(g)]
            metrics["rollout/groups_skipped_tied"] = metrics["rollout/frac_zero_std"]
        self.step_count += 1
        # Every rank must take part in the update's collectives, or none.
        if all_agree(bool(kept), self.dist):
            metrics |= self._update(kept)
            self._nonfinite_streak = (
                self._nonfinite_streak + 1 if metrics["train/skipped_nonfinite"] else 0
            )
            if metrics["train/skipped_nonfinite"]:
                log.warning("nonfinite_gradient", step=self.step_count, action="update skipped")
            if self._nonfinite_streak >= self.config.optim.max_nonfinite_steps:
                raise NonFiniteError(
                    f"{self._nonfinite_streak} steps in a row (up to step {self.step_count}) had "
                    "a non-finite loss or gradient and were skipped; the weights are those of "
                    f"step {self.step_count - self._nonfinite_streak}. Lower optim.lr, check the "
                    "rewards for NaN/inf, or use precision='fp32'"
                )
        else:
            log.warning("step_skipped", step=self.step_count, reason="no group to learn from")
        self._sync_weights()
        t2 = time.perf_counter()
        generated = self._generated_tokens() - tokens0
        metrics = (
            metrics
            | {
                "perf/rollout_s": t1 - t0,
                "perf/update_s": t2 - t1,
                "perf/step_s": t2 - t0,
                "perf/generated_tokens": float(generated),
                "perf/gen_tokens_per_s": generated / max(t1 - t0, 1e-9),
                "perf/generate_calls": float(self.agent.engine.stats.generate_calls - calls0),
                "perf/generate_s": self.agent.engine.stats.generate_s - generate0,
            }
            | peak_memory(self.device)
        )
        return mean_metrics(metrics, self.dist, weight=float(len(flatten(groups))))

    def _plot(self) -> None:
        """Draw metrics.png; a missing matplotlib or a plotting error never fails the run."""
        try:
            plot_run(self.run_dir)
        except Exception as e:  # the run is done and saved; the picture is a bonus
            log.warning("plot_skipped", reason=f"{type(e).__name__}: {e}")

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

    def _update(self, groups: Sequence[TrajectoryGroup]) -> dict[str, float]:
        """Score, estimate and update on ``groups``."""
        batch = self.prepare_batch(groups)
        batch, metrics = estimate(batch, self.estimator, self.config, self.dist)
        return metrics | policy_update(
            self.policy,
            batch,
            self.optim,
            self.config,
            value_model=self.value_model,
            seed=self.config.run.seed * 1_000_003 + self.step_count,
            ctx=self.dist,
            wrapped=self.wrapped,
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
        path = save_checkpoint(self, keep=self.config.run.keep_checkpoints)
        log.info("checkpoint_saved", step=self.step_count, path=str(path))
        return path

    def _resume(self, resume: bool | str | Path, *, force: bool) -> Path:
        """Load a checkpoint after checking the run directory and the config against it.

        Metrics logged after the checkpoint (by the run that went on past it) are
        dropped; the run's ``config.json`` becomes the config in force, and
        ``config_history.jsonl`` records what changed.
        """
        if resume is True:
            path = latest_checkpoint(self.run_dir)
            if path is None:
                raise CheckpointError(
                    f"resume=True but {checkpoint_dir(self.run_dir)} has no checkpoint (set "
                    "run.checkpoint_every to write them); start afresh with --overwrite "
                    "(run.overwrite=true)"
                )
        else:
            path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"no checkpoint directory at {path}")
        overwrite, abandoned = self.config.run.overwrite, []
        if self.dist.is_main:
            abandoned = rundir.check_resume_target(self.run_dir, path, overwrite=overwrite)
        changes = rundir.config_changes(
            read_checkpoint_config(path), json.loads(self.config.model_dump_json())
        )
        refused = rundir.breaking(changes)
        if refused and not force:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
            raise ResumeConfigError(
                f"cannot resume {path} exactly: the config differs from the checkpoint's in "
                f"settings that change training ({listed}). Restore them, or pass "
                "--force-resume (Trainer(force_resume=True)) to apply the new values from "
                "the checkpoint's step on"
            )
        step = load_checkpoint(self, path)
        self.agent.engine.update_weights(self.policy.state_dict(), step)  # base weights too
        if refused:  # the optimizer state brought back the old lr, betas and weight decay
            apply_optim_settings(
                self.optim, make_optimization(self.policy, self.config, self.value_model)
            )
        if self.dist.is_main:
            rundir.record_resume(
                self.run_dir, path, step, changes, forced=bool(refused), abandoned=abandoned
            )
            self.config.save(self.run_dir / "config.json")
        if "run.max_steps" in changes and self.config.optim.min_lr_ratio < 1:
            log.warning("lr_schedule_changed", effect="the cosine decay spans the new max_steps")
        log.info("resumed", step=step, checkpoint=str(path), changed=sorted(changes) or None)
        return path

    def save(self, path: str | Path, *, merge: bool = False) -> Path:
        """``save_pretrained`` the policy and tokenizer (and the value model) into ``path``.

        With LoRA this stores the adapter (load it with peft on top of the base
        model), or with ``merge=True`` a plain model with the adapters merged
        in, loadable with ``AutoModelForCausalLM.from_pretrained``. With several
        processes only rank 0 writes.
        """
        path = Path(path)
        if not self.dist.is_main:
            return path
        model = merged_copy(self.policy) if merge and is_peft_model(self.policy) else self.policy
        model.save_pretrained(path)
        self.agent.tokenizer.save_pretrained(path)
        if self.value_model is not None:
            self.value_model.save(path)
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

    def _generated_tokens(self) -> int:
        return self.agent.engine.stats.generated_tokens

    def _init_wandb(self) -> Any:
        cfg = self.config.wandb
        if not cfg.enabled:
            return None
        import wandb

        return wandb.init(
            project=cfg.project,
            name=cfg.name,
            tags=cfg.tags,
            mode=cfg.mode,
            dir=str(self.run_dir),
            config=self.config.model_dump(),
        )


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after a step, with a checkpoint to resume from.

    Attributes:
        signum: The signal.
        step: The last completed step.
        checkpoint: The checkpoint holding that step (None on ranks other than 0).
        exit_code: ``128 + signum``, the shell's convention (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint "
            f"{checkpoint}; resume with Trainer(..., resume=True) or turnrl train --resume"
        )


class ResumeConfigError(CheckpointError, ValueError):
    """The config of a resumed run differs from its checkpoint's in a setting that matters."""


class RolloutFailureError(RuntimeError):
    """Too many episodes of a step failed (environment, agent or reward errors)."""


class NonFiniteError(FloatingPointError):
    """The loss or gradients stayed non-finite for several steps in a row."""


def _check_failures(groups: Sequence[TrajectoryGroup], max_frac: float, step: int) -> None:
    """Raise RolloutFailureError, with the most common errors, above ``max_frac`` failures."""
    episodes = flatten(groups)
    failed = [t for t in episodes if t.failed]
    if not episodes or len(failed) / len(episodes) <= max_frac:
        return
    counts = Counter((t.error or "").splitlines()[0][:200] for t in failed)
    summary = "; ".join(f"{n} x {error!r}" for error, n in counts.most_common(5))
    raise RolloutFailureError(
        f"step {step}: {len(failed)} of {len(episodes)} episodes failed (more than "
        f"rollout.max_failed_frac={max_frac}). Most common errors: {summary}"
    )


class _NoMetrics:
    """The metrics sink of ranks other than 0: they do not write."""

    def log(self, step: int, metrics: dict[str, Any], *, echo: bool = True) -> None:
        """Drop the record."""

    def log_samples(self, step: int, trajectories: Sequence[Any], *, table: str) -> None:
        """Drop the samples."""

    def close(self) -> None:
        """Nothing to close."""


def _ddp(module: torch.nn.Module | None, device: torch.device) -> torch.nn.Module | None:
    """``module`` wrapped in DistributedDataParallel (None stays None)."""
    if module is None:
        return None
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def _check_context(max_context: int | None, max_new_tokens: int) -> None:
    """Refuse a ``max_new_tokens`` that leaves no room for a prompt in the model's context."""
    if max_context is not None and max_new_tokens >= max_context:
        raise ValueError(
            f"generation.max_new_tokens={max_new_tokens} does not fit the model's context of "
            f"{max_context} tokens, which also holds the prompt; set it well below {max_context}"
        )


def peak_memory(device: torch.device) -> dict[str, float]:
    """``perf/peak_rss_mb`` of this process so far and, on CUDA, ``perf/max_allocated_mb``."""
    out = {"perf/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["perf/max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _as_reward(rewards: Rewards) -> RewardFunction | None:
    if rewards is None or isinstance(rewards, RewardFunction):
        return rewards
    if isinstance(rewards, Mapping) or callable(rewards):
        return combine(rewards)
    return combine(*rewards)


def _tied(group: TrajectoryGroup) -> bool:
    """Whether the group's surviving episodes all got the same reward."""
    return len({t.reward for t in group.ok}) <= 1


def _frac_zero_std(groups: Sequence[TrajectoryGroup]) -> float:
    """Fraction of groups whose surviving episodes all got the same reward."""
    if not groups:
        return 0.0
    return sum(_tied(g) for g in groups) / len(groups)
