"""The algorithm table: each algorithm's estimator, its policy loss, and what they need.

:data:`ALGORITHMS` maps ``algorithm.estimator`` to an :class:`Algorithm`; the
policy losses it pairs estimators with are in :data:`LOSSES`
(``algorithm.loss``). Config validation, scoring, estimation and the update
ask the entry what to do; nothing else looks at an algorithm's name. To add an
algorithm, write its functions and add one entry here.

- ``grpo``, ``rloo``, ``gae``: advantage estimators (papers and departures in
  :mod:`turnrl.training.advantages`) feeding the PPO-clip loss (Schulman et al.
  2017, with DAPO's separate clip ranges; :func:`~turnrl.training.losses.ppo_clip_loss`).
- ``turn_grpo``, ``turn_gae``: turn-level credit, one advantage per turn
  (:mod:`turnrl.training.turn_credit`), feeding PPO-clip.
- ``gvpo``: a loss with its own estimator, all of it in :mod:`turnrl.training.gvpo`.
- ``package.module:factory``: a user's estimator factory, feeding PPO-clip
  (:func:`algorithm_for`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from turnrl.imports import import_object
from turnrl.training import gvpo
from turnrl.training.advantages import AdvantageEstimator, make_gae, make_grpo, make_rloo
from turnrl.training.batch import RolloutBatch
from turnrl.training.losses import AGGREGATIONS, ppo_clip_loss
from turnrl.training.turn_credit import make_turn_gae, make_turn_grpo, turn_state_values
from turnrl.training.value import state_values

if TYPE_CHECKING:
    from turnrl.training.config import AlgorithmConfig

EstimatorFactory = Callable[["AlgorithmConfig"], AdvantageEstimator]
ValueBaseline = Callable[[RolloutBatch, torch.Tensor], torch.Tensor]
"""``(batch, values (N, T)) -> (N, T)``: the value each token's advantage is measured from."""


@dataclass(frozen=True)
class StepSizes:
    """The sizes of one optimizer step, which a micro-batch's losses are divided by.

    Attributes:
        normalizer: What the aggregated per-token losses are divided by
            (``algorithm.loss_aggregation``: the step's tokens, trajectories,
            or trajectories x a token budget), summed over ranks.
        groups: Groups in the step, summed over ranks.
        micro_batches: Micro-batches in the step, summed over ranks.
        rank_tokens: Sampled tokens of this rank's share of the step (per-token
            metrics are weighted by a micro-batch's share of them).
        rank_sequences: Trajectories (not rows: a trajectory trained as
            several rows counts once) of this rank's share of the step.
    """

    normalizer: float
    groups: float
    micro_batches: float
    rank_tokens: int
    rank_sequences: int


class PolicyLossFn(Protocol):
    """A micro-batch's share of the step's policy loss, and its share of the loss's metrics."""

    def __call__(
        self,
        logprobs: torch.Tensor,
        micro: RolloutBatch,
        config: AlgorithmConfig,
        step: StepSizes,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass(frozen=True)
class PolicyLoss:
    """A policy loss and what it needs from the batch.

    Attributes:
        name: Its ``algorithm.loss`` name.
        compute: The loss of a micro-batch (``logprobs`` has shape (n, T)).
        whole_groups: Its micro-batches and mini-batches hold whole groups (it
            compares responses within a group).
        needs_behavior_logprobs: It takes a ratio to the log-probs the tokens
            were sampled with, so groups without them are refused.
        adds_kl_term: ``beta * KL`` to the reference is added to it under
            ``kl_penalty="loss"`` (a loss whose beta is its own adds none).
        takes_any_advantages: It trains on the estimator's advantages, so any
            estimator (a user's too) may feed it.
        uses_reference: Whether a config needs the frozen reference model.
        takes_importance_weights: It multiplies its per-token terms by the batch's
            ``is_weights`` (``mismatch.correction``); a loss without a PPO ratio
            refuses a correction.
    """

    name: str
    compute: PolicyLossFn
    whole_groups: bool
    needs_behavior_logprobs: bool
    adds_kl_term: bool
    takes_any_advantages: bool
    uses_reference: Callable[[AlgorithmConfig], bool]
    takes_importance_weights: bool = False


def _no_constraints(config: AlgorithmConfig) -> None:
    """Accept every setting."""


def token_state_values(batch: RolloutBatch, values: torch.Tensor) -> torch.Tensor:
    """Token-level baseline: the value of the state each token was chosen in. (N, T) -> (N, T)."""
    return state_values(values)


@dataclass(frozen=True)
class Algorithm:
    """An advantage estimator, the loss it feeds, and what the pair needs.

    Attributes:
        estimator: Factory of the estimator, taking the ``AlgorithmConfig``.
        loss: The policy loss.
        compares_group: The estimator compares episodes within a group (it
            needs ``rollout.num_generations >= 2``).
        critic: It needs a value model (trained by the value loss).
        whiten_advantages: The default of ``algorithm.whiten_advantages``.
        check: Raises ValueError, naming the fix, for settings it cannot honour.
        value_baseline: With a critic, the value each token's advantage is
            measured from; the value targets are ``advantages + value_baseline``
            (the state the token was chosen in, or for turn-level credit the
            state its turn started from).
    """

    estimator: EstimatorFactory
    loss: PolicyLoss
    compares_group: bool = False
    critic: bool = False
    whiten_advantages: bool = False
    check: Callable[[AlgorithmConfig], None] = _no_constraints
    value_baseline: ValueBaseline = token_state_values

    @property
    def takes_custom_estimator(self) -> bool:
        """Whether a user's estimator (``Trainer(estimator=...)``) may replace its own."""
        return self.loss.takes_any_advantages


def ppo_clip_policy_loss(
    logprobs: torch.Tensor, micro: RolloutBatch, config: AlgorithmConfig, step: StepSizes
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip on the micro-batch's advantages, aggregated over the step.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv
    1707.06347. Departs from it: separate lower and upper clip ranges (DAPO's
    clip-higher, Yu et al. 2025, arXiv 2503.14476); the ratio is per token; the
    per-token losses are aggregated as ``loss_aggregation`` says (see
    :mod:`turnrl.training.losses`); no value loss or entropy here (the caller
    adds them, :func:`turnrl.training.objective.micro_batch_loss`). With a
    mismatch correction each token's term is multiplied by its detached
    importance weight (:mod:`turnrl.training.mismatch`).

    Args:
        logprobs: Shape (n, T), the current policy's log-probs of ``micro``.
        micro: With ``old_logprobs`` and ``advantages`` (and ``is_weights``
            under a mismatch correction).
        config: ``clip_eps_low``, ``clip_eps_high``, ``loss_aggregation``.
        step: The optimizer step's sizes.
    """
    assert micro.old_logprobs is not None and micro.advantages is not None
    mask = micro.loss_mask
    per_token, stats = ppo_clip_loss(
        logprobs,
        micro.old_logprobs,
        micro.advantages,
        mask,
        clip_eps_low=config.clip_eps_low,
        clip_eps_high=config.clip_eps_high,
    )
    if micro.is_weights is not None:
        per_token = per_token * micro.is_weights  # (n, T), detached weights
    aggregate = AGGREGATIONS[config.loss_aggregation]
    loss = aggregate(per_token, mask, step.normalizer, micro.trajectory_ids)
    share = mask.sum().item() / max(step.rank_tokens, 1)  # this micro-batch's share of tokens
    return loss, {
        "train/clip_frac": stats["clip_frac"].item() * share,
        "train/ratio_mean": stats["ratio_mean"].item() * share,
    }


def _kl_coefficient_positive(config: AlgorithmConfig) -> bool:
    return config.beta > 0


PPO_CLIP = PolicyLoss(
    name="ppo_clip",
    compute=ppo_clip_policy_loss,
    whole_groups=False,
    needs_behavior_logprobs=True,
    adds_kl_term=True,
    takes_any_advantages=True,
    uses_reference=_kl_coefficient_positive,
    takes_importance_weights=True,
)
GVPO = PolicyLoss(
    name="gvpo",
    compute=gvpo.gvpo_policy_loss,
    whole_groups=True,
    needs_behavior_logprobs=False,
    adds_kl_term=False,
    takes_any_advantages=False,
    uses_reference=gvpo.uses_reference,
    takes_importance_weights=False,
)

LOSSES: dict[str, PolicyLoss] = {loss.name: loss for loss in (PPO_CLIP, GVPO)}
"""``algorithm.loss`` -> the policy loss."""

ALGORITHMS: dict[str, Algorithm] = {
    "grpo": Algorithm(make_grpo, PPO_CLIP, compares_group=True),
    "rloo": Algorithm(make_rloo, PPO_CLIP, compares_group=True),
    "gae": Algorithm(make_gae, PPO_CLIP, critic=True, whiten_advantages=True),
    "gvpo": Algorithm(gvpo.make_gvpo, GVPO, compares_group=True, check=gvpo.check_config),
    "turn_grpo": Algorithm(make_turn_grpo, PPO_CLIP, compares_group=True),
    "turn_gae": Algorithm(
        make_turn_gae,
        PPO_CLIP,
        critic=True,
        whiten_advantages=True,
        value_baseline=turn_state_values,
    ),
}
"""``algorithm.estimator`` -> the algorithm."""


def algorithm_for(config: AlgorithmConfig) -> Algorithm:
    """The algorithm ``config`` selects: its table entry, with ``config.loss`` if set.

    An import path (``package.module:factory``) selects the estimator that
    factory makes, feeding PPO-clip; it is imported when the estimator is built.

    Raises:
        ValueError: ``config.loss`` is unknown, or cannot take this estimator's
            advantages (a loss with its own estimator, or an estimator made for
            its own loss).
    """
    spec = ALGORITHMS.get(config.estimator)
    if spec is None:
        spec = Algorithm(_ImportedFactory(config.estimator), PPO_CLIP)
    if config.loss is None or config.loss == spec.loss.name:
        return spec
    loss = LOSSES.get(config.loss)
    if loss is None:
        raise ValueError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    if not (loss.takes_any_advantages and spec.loss.takes_any_advantages):
        raise ValueError(
            f"loss={config.loss!r} cannot train on estimator={config.estimator!r}: "
            f"estimator {config.estimator!r} goes with loss {spec.loss.name!r}; leave "
            "algorithm.loss unset for an estimator's own loss"
        )
    return dataclasses.replace(spec, loss=loss)


def estimator_factory(kind: str) -> EstimatorFactory:
    """The estimator factory for ``kind``: a table entry or ``package.module:factory``.

    Raises:
        ValueError: The name is unknown, the import path does not resolve, or
            it names something that cannot be a factory (not callable, or a
            built-in function such as ``builtins:print``).
    """
    if kind in ALGORITHMS:
        return ALGORITHMS[kind].estimator
    hint = (
        f"give a built-in name ({', '.join(ALGORITHMS)}) or 'package.module:factory', a "
        "function taking the AlgorithmConfig and returning an estimator"
    )
    try:
        factory = import_object(kind)
    except ValueError as e:
        raise ValueError(f"estimator {e}; {hint}") from None
    if not callable(factory) or inspect.isbuiltin(factory):
        what = "a built-in function" if inspect.isbuiltin(factory) else "not callable"
        raise ValueError(f"estimator {kind!r} is {what}, not an estimator factory; {hint}")
    return factory


@dataclass(frozen=True)
class _ImportedFactory:
    """The estimator factory named by an import path, imported when called."""

    path: str

    def __call__(self, config: AlgorithmConfig) -> AdvantageEstimator:
        return estimator_factory(self.path)(config)


def check_custom_estimator(config: AlgorithmConfig) -> None:
    """Refuse a user's estimator object (``Trainer(estimator=...)``) where it cannot apply.

    Raises:
        ValueError: The algorithm's loss has its own estimator.
    """
    spec = algorithm_for(config)
    if not spec.takes_custom_estimator:
        takers = [k for k, a in ALGORITHMS.items() if a.takes_custom_estimator]
        raise ValueError(
            f"estimator=... replaces the advantage estimator of a loss that takes advantages; "
            f"estimator={config.estimator!r} has its own loss ({spec.loss.name}), so set "
            f"config.algorithm.estimator to one of {', '.join(map(repr, takers))}"
        )
