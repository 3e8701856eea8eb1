"""Advantage estimators: pure functions of a RolloutBatch, one dict of kinds.

An estimator is any callable ``(batch, values=None) -> advantages (N, T)``,
zero off the loss mask, made by a factory taking the ``AlgorithmConfig``
(``make_grpo``...). The table :data:`turnrl.training.algorithms.ALGORITHMS`
pairs each with its loss; a user's own estimator is passed to the Trainer
(``estimator=``) or named in the config as ``"package.module:function"`` (a
factory with the same signature).

- ``grpo``: Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, outcome
  supervision: each trajectory's reward minus its group's mean, optionally
  divided by a standard deviation, given to every sampled token of the
  trajectory.
- ``rloo``: REINFORCE leave-one-out, Kool et al. 2019 ("Buy 4 REINFORCE
  samples, get a baseline for free!") as used for LLMs by Ahmadian et al.
  2024, arXiv 2402.14740: the baseline of a trajectory is the mean reward of
  the *other* trajectories of its group, ``A_i = R_i - mean_{j != i} R_j =
  k/(k-1) (R_i - mean R)``.
- ``gae``: generalized advantage estimation, Schulman et al. 2016, arXiv
  1506.02438, at token level over the assistant's tokens, with a learned
  value function (see :mod:`turnrl.training.value`). A truncated episode
  bootstraps from the value of its real next state (``batch.next_values``).

GVPO is a loss, not an advantage: see :mod:`turnrl.training.gvpo`.

Where this departs from the papers:

- Normalization is a separate, named step. ``scale_rewards`` (grpo, rloo;
  default ``group`` for grpo, ``none`` for rloo as in its paper)
  divides by the group's std as in the GRPO paper (``group``), by the whole
  batch's std (``batch``), or not at all (``none``, Dr. GRPO, Liu et al. 2025,
  arXiv 2503.20783, who show the group std biases updates toward easy and
  hard prompts). The std is Bessel-corrected and ``eps = 1e-4`` is added, as
  TRL does. Advantage whitening over the batch (:func:`whiten`) is the
  trainer's step after any estimator, on by default for ``gae`` only.
- Turn-level credit (one advantage per turn, ``turn_grpo`` and ``turn_gae``)
  is in :mod:`turnrl.training.turn_credit`.
- A multi-turn trajectory is one sample for the outcome estimators: its total
  reward (environment rewards of every turn plus reward functions) is the
  outcome, and every assistant token of every turn gets the same advantage.
  ``gae`` instead sees each turn's environment reward at that turn's last
  token (``RolloutBatch.token_rewards``).
- A trajectory trained as several rows (step-wise samples, see
  :mod:`turnrl.training.layout`) is still one sample: group statistics are
  over trajectories (:meth:`RolloutBatch.trajectories`), its rows share its
  advantage, and ``gae`` runs over its rows' tokens in order, bootstrapping
  across a row boundary from the next row's first state value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from turnrl.training.batch import RolloutBatch, TrajectoryIndex
from turnrl.training.value import state_values

if TYPE_CHECKING:
    from turnrl.training.config import AlgorithmConfig


class AdvantageEstimator(Protocol):
    """Per-token advantages for a batch. Returns shape (N, T), 0 off the loss mask.

    The batch's N rows may hold fewer trajectories (step-wise samples):
    ``batch.trajectories()`` groups them, so that statistics count each
    trajectory once (see the built-in estimators).

    ``values`` (only for estimators that need a critic, like ``gae``) has shape
    (N, T): ``values[i, t]`` is the value of sequence ``i``'s prefix up to and
    including token ``t``.
    """

    def __call__(self, batch: RolloutBatch, values: torch.Tensor | None = None) -> torch.Tensor: ...


def _group_sum(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over each group. Shapes: (N,), (N,) -> (num_groups,)."""
    num_groups = int(group_ids.max()) + 1
    return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, group_ids, x)


def group_mean(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Each element's group mean. Shapes: x (N,), group_ids (N,) -> (N,)."""
    counts = _group_sum(torch.ones_like(x), group_ids)
    return (_group_sum(x, group_ids) / counts)[group_ids]


def group_std(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Each element's group std (Bessel-corrected; 0 for a group of one). Shape (N,)."""
    counts = _group_sum(torch.ones_like(x), group_ids)
    squares = _group_sum((x - group_mean(x, group_ids)) ** 2, group_ids)
    return (squares / (counts - 1).clamp(min=1)).sqrt()[group_ids]


def group_size(group_ids: torch.Tensor) -> torch.Tensor:
    """Each element's group size. Shape (N,)."""
    ones = torch.ones_like(group_ids, dtype=torch.float32)
    return _group_sum(ones, group_ids)[group_ids]


def scale_advantages(
    centered: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    how: str,
    eps: float = 1e-4,
    batch_std: float | None = None,
) -> torch.Tensor:
    """Divide centered rewards by the group std, the batch std, or nothing.

    Args:
        centered: Shape (N,), rewards minus a baseline.
        rewards: Shape (N,), the raw rewards (whose std is taken).
        group_ids: Shape (N,).
        how: ``group`` | ``batch`` | ``none``.
        eps: Added to the std before dividing.
        batch_std: The batch std to use for ``batch`` (when the batch is spread
            over processes); default: the std of ``rewards``.
    """
    if how == "group":
        return centered / (group_std(rewards, group_ids) + eps)
    if how == "batch":
        std = rewards.std() if batch_std is None else batch_std
        return centered / (std + eps)
    if how == "none":
        return centered
    raise ValueError(f"unknown scale_rewards {how!r}; choose group, batch or none")


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    batch_std: float | None = None,
) -> torch.Tensor:
    """Group-relative advantage per trajectory.

    Args:
        rewards: Shape (N,).
        group_ids: Shape (N,).
        scale: ``group`` | ``batch`` | ``none`` (see the module docstring).
        eps: Added to the std before dividing.
        batch_std: The std of the whole step's rewards for ``batch`` when the
            step is spread over processes; default: the std of ``rewards``.

    Returns:
        Shape (N,).
    """
    centered = rewards - group_mean(rewards, group_ids)  # (N,)
    return scale_advantages(centered, rewards, group_ids, scale, eps, batch_std)


def rloo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    scale: str = "none",
    eps: float = 1e-4,
    batch_std: float | None = None,
) -> torch.Tensor:
    """Leave-one-out advantage per trajectory: ``R_i - mean of the group's other rewards``.

    Args:
        rewards: Shape (N,).
        group_ids: Shape (N,). Every group needs at least two trajectories.
        scale: ``group`` | ``batch`` | ``none``.
        eps: Added to the std before dividing.
        batch_std: As for :func:`grpo_advantages`.

    Returns:
        Shape (N,).

    Raises:
        ValueError: A group has a single trajectory (it has no baseline).
    """
    sizes = group_size(group_ids)
    if bool((sizes < 2).any()):
        raise ValueError("rloo needs at least two trajectories per group (rollout.min_group_size)")
    others = (_group_sum(rewards, group_ids)[group_ids] - rewards) / (sizes - 1)
    return scale_advantages(rewards - others, rewards, group_ids, scale, eps, batch_std)


def per_token(sequence_advantages: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast (N,) advantages over the sampled tokens: (N,) x (N, T) -> (N, T)."""
    return sequence_advantages[:, None] * loss_mask


def whiten(
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-8,
    moments: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Shift and scale advantages to mean 0, std 1 over the masked tokens. Shape (N, T).

    ``moments`` = ``(mean, variance)`` to use instead of this batch's (when the
    batch is spread over processes).
    """
    if moments is None:
        count = mask.sum().clamp(min=1)
        mean = (advantages * mask).sum() / count
        var = (((advantages - mean) * mask) ** 2).sum() / count
    else:
        mean, var = (torch.tensor(m, dtype=advantages.dtype) for m in moments)
    return (advantages - mean) * torch.rsqrt(var + eps) * mask


def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    loss_mask: torch.Tensor,
    truncated: torch.Tensor,
    next_values: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    trajectory_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level GAE over each trajectory's sampled tokens.

    Only sampled (loss-mask) tokens are time steps; environment tokens between
    turns are part of the transition from one assistant token to the next.
    The value of the state in which token ``t`` is chosen is ``values[t - 1]``
    (the prefix before it). A trajectory of several rows (step-wise samples)
    is one sequence of time steps, its rows' sampled tokens in order: after a
    row's last token comes the next row's first, whose state value (the next
    row's prompt) is the bootstrap, never 0. After the trajectory's last
    sampled token the next value is 0 when the episode terminated, and
    ``next_values`` of its last row when it was truncated: the value of the
    real next state, the conversation including the environment's last answer
    (which the sequence stops short of), the kind of state every later turn of
    an episode starts from and the value loss trains. ``values[last]`` would
    not do: no token is chosen after the last one, so the value loss never
    trains the value there.

    Args:
        token_rewards: Shape (N, T), reward received after each token.
        values: Shape (N, T), value of the prefix up to and including token t.
        loss_mask: Shape (N, T), 1 on sampled tokens.
        truncated: Shape (N,), bool: bootstrap after the trajectory's last
            sampled token (read on its last row).
        next_values: Shape (N,), the value of the state after a trajectory's
            last sampled token (read on its last row, where ``truncated``).
        gamma: Discount per sampled token.
        lam: GAE's lambda.
        trajectory_ids: Shape (N,), each row's trajectory (rows of one are in
            turn order); None: one row per trajectory.

    Returns:
        ``(advantages, returns)``, both (N, T) and 0 off the mask;
        ``returns = advantages + V(state)``, the value targets.
    """
    n, width = loss_mask.shape
    index, valid = _time_steps(loss_mask, trajectory_ids)  # (M, L) flat positions
    lengths = valid.sum(-1)  # (M,)
    m, steps = valid.shape
    before = state_values(values)  # (N, T): V of the state token t is chosen in
    rewards = token_rewards.flatten()[index] * valid  # (M, L)
    v = before.flatten()[index] * valid  # (M, L)
    trajectories = torch.arange(m, device=loss_mask.device)
    last_row = index[trajectories, (lengths - 1).clamp(min=0)] // max(width, 1)  # (M,)
    cut = truncated[last_row] & (lengths > 0)
    bootstrap = torch.where(cut, next_values[last_row].to(values.dtype), 0.0)  # (M,)
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)  # (M, L)
    next_v[trajectories, (lengths - 1).clamp(min=0)] = bootstrap
    deltas = (rewards + gamma * next_v - v) * valid  # (M, L)

    packed = torch.zeros_like(deltas)
    running = torch.zeros(m, dtype=deltas.dtype, device=deltas.device)
    for j in reversed(range(steps)):
        running = torch.where(valid[:, j], deltas[:, j] + gamma * lam * running, 0.0)
        packed[:, j] = running
    advantages = torch.zeros(n * width, dtype=deltas.dtype, device=deltas.device)
    advantages[index[valid]] = packed[valid]
    advantages = advantages.view(n, width)
    returns = (advantages + before) * loss_mask
    return advantages * loss_mask, returns


def _time_steps(
    loss_mask: torch.Tensor, trajectory_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each trajectory's sampled tokens in order, as flat positions in the (N, T) batch.

    Returns:
        ``(index, valid)``, both (M, L) for M trajectories of at most L sampled
        tokens: ``index[m, j]`` is the position of trajectory ``m``'s ``j``-th
        sampled token in ``loss_mask.flatten()``, where ``valid[m, j]``.
    """
    n, width = loss_mask.shape
    trajectories = TrajectoryIndex.of(trajectory_ids, n)
    flat = (loss_mask.flatten() > 0).nonzero().squeeze(-1)  # (K,) row by row, left to right
    owner = trajectories.of_row[flat // max(width, 1)]  # (K,)
    order = torch.argsort(owner, stable=True)  # a trajectory's tokens together, in order
    flat, owner = flat[order], owner[order]
    lengths = torch.bincount(owner, minlength=trajectories.count)  # (M,)
    starts = torch.cumsum(lengths, 0) - lengths  # (M,)
    steps = int(lengths.max()) if trajectories.count else 0
    index = torch.zeros(trajectories.count, steps, dtype=torch.long, device=loss_mask.device)
    index[owner, torch.arange(len(flat), device=loss_mask.device) - starts[owner]] = flat
    valid = torch.arange(steps, device=loss_mask.device)[None] < lengths[:, None]  # (M, L)
    return index, valid


def make_grpo(config: AlgorithmConfig) -> AdvantageEstimator:
    """The GRPO estimator configured by ``config.scale_rewards``.

    Credit: every turn of a trajectory gets the trajectory's advantage.
    """

    def grpo(batch: RolloutBatch, values: torch.Tensor | None = None) -> torch.Tensor:
        how = config.scale_rewards or "group"
        trajectories = batch.trajectories()
        advantages = grpo_advantages(
            trajectories.pick(batch.rewards),
            trajectories.pick(batch.group_ids),
            scale=how,
            batch_std=batch.reward_std,
        )  # (M,) one per trajectory, however many rows it has
        return per_token(trajectories.rows(advantages), batch.loss_mask)

    return grpo


def make_rloo(config: AlgorithmConfig) -> AdvantageEstimator:
    """The RLOO estimator configured by ``config.scale_rewards``.

    Credit: every turn of a trajectory gets the trajectory's advantage.
    """

    def rloo(batch: RolloutBatch, values: torch.Tensor | None = None) -> torch.Tensor:
        how = config.scale_rewards or "none"
        trajectories = batch.trajectories()
        advantages = rloo_advantages(
            trajectories.pick(batch.rewards),
            trajectories.pick(batch.group_ids),
            scale=how,
            batch_std=batch.reward_std,
        )  # (M,)
        return per_token(trajectories.rows(advantages), batch.loss_mask)

    return rloo


def make_gae(config: AlgorithmConfig) -> AdvantageEstimator:
    """The GAE estimator with ``config.gamma`` and ``config.gae_lambda``.

    Credit: each token its own advantage; turn ``k``'s tokens see the rewards of
    turn ``k`` and later turns, discounted by ``gamma`` per sampled token.
    """

    def gae(batch: RolloutBatch, values: torch.Tensor | None = None) -> torch.Tensor:
        if values is None:
            raise ValueError("the gae estimator needs values from a value head")
        cut = batch.truncated & ~batch.terminated  # (N,) episodes that go on: bootstrap
        if batch.next_values is None and bool(cut.any()):
            raise ValueError(
                "the gae estimator bootstraps truncated episodes from the value of their next "
                "state, and the batch has none: build it with build_batch(..., "
                "encode=agent.encode) and score it with logprobs_and_values and a value model"
            )
        next_values = batch.next_values
        if next_values is None:  # no row bootstraps
            next_values = torch.zeros(len(cut), device=cut.device)
        advantages, _ = gae_advantages(
            batch.token_rewards,
            values,
            batch.loss_mask,
            cut,
            next_values,
            gamma=config.gamma,
            lam=config.gae_lambda,
            trajectory_ids=batch.trajectory_ids,
        )
        return advantages

    return gae
