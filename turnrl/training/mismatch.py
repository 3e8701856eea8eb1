"""Rollout/trainer mismatch: measure it, and correct the policy loss for it.

The engine that samples a rollout records each token's log-prob. When its
numerics differ from the trainer's (another kernel, bf16, stale weights), the
tokens come from ``pi_engine``, not from the ``pi_old`` the trainer computes,
and a PPO ratio against the engine's log-probs mixes the two distributions.
The correction (``mismatch.correction``) takes the trainer's own pre-update
log-probs as the ratio's denominator and weighs each token's policy-gradient
term by the importance weight of ``pi_old`` to ``pi_engine``, detached:

- token level: ``w_t = exp(log pi_old(y_t) - log pi_engine(y_t))``;
- sequence level: one weight per trajectory (all of its rows, every sampled
  token), ``w = exp(sum_t (log pi_old(y_t) - log pi_engine(y_t)))``, given to
  each of its tokens.

``tis``: truncated importance sampling, ``min(w, cap)`` (Yao et al. 2025, "Your
Efficient RL Framework Secretly Brings You Off-Policy RL Training"). ``mis``:
masked importance sampling, ``w`` where ``lower <= w <= cap`` and 0 elsewhere,
so a token (or trajectory) the engine and trainer disagree on too much gives no
gradient (Liu, Li et al. 2025, "When Speed Kills Stability: Demystifying RL
Collapse from the Training-Inference Mismatch").

Departures: a masked token still counts in the loss's normalizer (the
aggregation's token or trajectory count is the step's, as without correction,
so the update stays independent of how the step is split); the log-weight is
clamped to [-20, 20] before ``exp`` so a long sequence cannot overflow.

Where the trainer's log-probs come from: with a correction, one forward pass
without gradients before the update (the weights are needed before it);
without one, the update's own forward passes before its first optimizer step
(:class:`MismatchProbe`), so measuring costs nothing.

Metrics (:func:`mismatch_metrics`): ``train/mismatch_kl``, the mean over
sampled tokens of the k3 estimate of KL(pi_engine || pi_old) (tokens drawn
from the engine); ``train/is_ratio_mean`` and ``train/is_ratio_max`` of the
untruncated weights (over tokens, or trajectories at sequence level); and the
share of them the correction changes, ``train/is_truncated_frac`` (tis) or
``train/is_masked_frac`` (mis).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from turnrl.training.batch import RolloutBatch, TrajectoryIndex
from turnrl.training.losses import kl_k3, masked_mean

if TYPE_CHECKING:
    from turnrl.training.config_run import MismatchConfig

MAX_LOG_WEIGHT = 20.0
"""Log-weights are clamped to +-this before ``exp`` (a weight of about 5e8 at most)."""


def log_weights(
    trainer_logprobs: torch.Tensor,
    engine_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    level: str = "token",
    trajectory_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The log importance weight of each sampled token, clamped (see the module docstring).

    Args:
        trainer_logprobs: Shape (N, T), the trainer's pre-update log-probs.
        engine_logprobs: Shape (N, T), the log-probs the engine sampled with.
        mask: Shape (N, T), 1 on sampled tokens.
        level: ``token`` (each token its own) or ``sequence`` (each token its
            trajectory's sum).
        trajectory_ids: Shape (N,), each row's trajectory (None: one row each).

    Returns:
        Shape (N, T), 0 off the mask.
    """
    diff = (trainer_logprobs - engine_logprobs) * mask  # (N, T)
    if level == "sequence":
        trajectories = TrajectoryIndex.of(trajectory_ids, len(mask))
        diff = trajectories.rows(trajectories.sum(diff.sum(-1)))[:, None] * mask  # (N, T)
    return diff.clamp(-MAX_LOG_WEIGHT, MAX_LOG_WEIGHT) * mask


def trajectory_log_weights(
    trainer_logprobs: torch.Tensor,
    engine_logprobs: torch.Tensor,
    mask: torch.Tensor,
    trajectories: TrajectoryIndex,
) -> torch.Tensor:
    """Each trajectory's clamped log weight (sequence level). Shapes (N, T) x3 -> (M,)."""
    diff = ((trainer_logprobs - engine_logprobs) * mask).sum(-1)  # (N,)
    return trajectories.sum(diff).clamp(-MAX_LOG_WEIGHT, MAX_LOG_WEIGHT)


def truncate(weights: torch.Tensor, cap: float, lower: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TIS: ``min(w, cap)``, and where the cap bit (``lower`` is MIS's). (N, T) -> (N, T) x2."""
    changed = weights > cap
    return weights.clamp(max=cap), changed


def mask_outside(
    weights: torch.Tensor, cap: float, lower: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MIS: ``w`` inside ``[lower, cap]``, else 0, and where it was dropped. (N, T) -> (N, T) x2."""
    changed = (weights < lower) | (weights > cap)
    return torch.where(changed, torch.zeros_like(weights), weights), changed


Correction = Callable[[torch.Tensor, float, float], tuple[torch.Tensor, torch.Tensor]]

CORRECTIONS: dict[str, Correction] = {"tis": truncate, "mis": mask_outside}
"""``mismatch.correction`` -> the weights it trains with (``none`` is absent: no weights)."""

CHANGED_METRIC = {"tis": "train/is_truncated_frac", "mis": "train/is_masked_frac"}


def importance_weights(
    trainer_logprobs: torch.Tensor,
    engine_logprobs: torch.Tensor,
    mask: torch.Tensor,
    config: MismatchConfig,
    trajectory_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights the policy loss is multiplied by, and where the correction changed them.

    Args:
        trainer_logprobs: Shape (N, T).
        engine_logprobs: Shape (N, T).
        mask: Shape (N, T).
        config: ``correction`` (``tis`` or ``mis``), ``level``, ``cap``, ``lower``.
        trajectory_ids: Shape (N,) or None.

    Returns:
        ``(weights (N, T), changed (N, T) bool)``, both 0 off the mask.
    """
    raw = log_weights(
        trainer_logprobs, engine_logprobs, mask, level=config.level, trajectory_ids=trajectory_ids
    ).exp()  # (N, T)
    weights, changed = CORRECTIONS[config.correction](raw, config.cap, config.lower_bound)
    on = mask.bool()
    return weights * mask, changed & on


def mismatch_metrics(batch: RolloutBatch, config: MismatchConfig) -> dict[str, float]:
    """The mismatch metrics of a batch whose ``trainer_logprobs`` were measured ({} if not).

    Token level: ratios and fractions over sampled tokens; sequence level: over
    trajectories (each counted once). ``train/mismatch_kl`` is per token at both.
    """
    trainer = batch.trainer_logprobs
    if trainer is None or batch.num_tokens == 0:
        return {}
    engine, mask = batch.behavior_logprobs, batch.loss_mask
    # In float64: k3 of a log-ratio d is about d^2 / 2, which fp32 rounds to 0 below d ~ 1e-3.
    k3 = kl_k3(engine.double(), trainer.double()) * mask  # (N, T)
    metrics = {"train/mismatch_kl": masked_mean(k3, mask.double()).item()}
    if config.level == "sequence":
        trajectories = batch.trajectories()
        sampled = trajectories.sum(mask.sum(-1)) > 0  # (M,) trajectories with a sampled token
        values = trajectory_log_weights(trainer, engine, mask, trajectories)[sampled].exp()
        unit_mask = torch.ones_like(values)  # (M',)
    else:
        values = log_weights(trainer, engine, mask).exp()  # (N, T)
        unit_mask = mask
    metrics["train/is_ratio_mean"] = masked_mean(values, unit_mask).item()
    metrics["train/is_ratio_max"] = values[unit_mask.bool()].max().item()
    if config.correction in CORRECTIONS:
        _, changed = CORRECTIONS[config.correction](values, config.cap, config.lower_bound)
        metrics[CHANGED_METRIC[config.correction]] = masked_mean(changed.float(), unit_mask).item()
    return metrics


@dataclass
class MismatchProbe:
    """The trainer's log-probs from the update's own forward passes, before the policy moves.

    Without a correction the mismatch is measured at no extra cost: until the
    first optimizer step the policy is the pre-update one, so the forward passes
    of that step's micro-batches give the trainer's log-probs of its rows (all
    rows with ``num_minibatches: 1``; the first mini-batch's otherwise).
    """

    batch_: RolloutBatch
    logprobs: torch.Tensor  # (N, T)
    rows: torch.Tensor | None = None  # the first optimizer step's rows, once it is taken

    @classmethod
    def of(cls, batch: RolloutBatch, config: MismatchConfig) -> MismatchProbe | None:
        """A probe when the mismatch is measured and not already scored, else None."""
        if not config.measure or batch.trainer_logprobs is not None:
            return None
        if not batch.has_behavior_logprobs:
            return None
        return cls(batch, torch.zeros_like(batch.loss_mask))

    def recorder(self, rows: torch.Tensor) -> Callable[[torch.Tensor], None] | None:
        """What keeps a micro-batch's log-probs (rows of the whole batch), before the step."""
        if self.rows is not None:
            return None

        def record(logprobs: torch.Tensor) -> None:
            self.logprobs[rows, : logprobs.shape[1]] = logprobs.float()

        return record

    def batch(self) -> RolloutBatch:
        """The first optimizer step's rows, with the trainer's log-probs."""
        assert self.rows is not None
        rows = self.batch_.select(self.rows)
        width = rows.input_ids.shape[1]
        trainer = self.logprobs[self.rows, :width] * rows.loss_mask
        return dataclasses.replace(rows, trainer_logprobs=trainer)
