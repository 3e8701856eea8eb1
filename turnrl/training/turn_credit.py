"""Turn-level credit: per-turn rewards, turn-level GAE and a turn-level group baseline.

A turn's reward ``r_k`` is the sum of ``RolloutBatch.token_rewards`` over
turn ``k``'s sampled tokens: the environment's reward for the turn (at its
last token), plus, on the last turn, the reward functions' score (at the
trajectory's last sampled token), minus the turn's KL penalty under
``kl_penalty: reward``. Both estimators give every token of turn ``k`` the
same advantage ``A_k``.

- ``turn_gae``: generalized advantage estimation (Schulman et al. 2016, arXiv
  1506.02438) with turns as the time steps. ``V_k`` is the critic's value of
  the state turn ``k`` was sampled from (the prefix before its first
  completion token), ``delta_k = r_k + turn_gamma * V_{k+1} - V_k`` and
  ``A_k = delta_k + turn_gamma * gae_lambda * A_{k+1}``; after the last turn
  ``V`` is 0 when the episode terminated and the critic's value of its next
  state (``next_values``) when it was truncated. The value targets of turn
  ``k``'s tokens are ``A_k + V_k`` (:func:`turn_state_values`): rewards come
  at turn ends and are not discounted within a turn, so every state inside a
  turn has the same return to predict.
- ``turn_grpo``: a group baseline per turn, as in MT-GRPO (Zeng et al. 2025,
  arXiv 2505.11821) and GiGPO's step-level groups (Feng et al. 2025, arXiv
  2505.10978). Turn ``k``'s return is ``G_k = sum_{j>=k} turn_gamma^(j-k)
  r_j``; its comparison set is turn ``k`` of every trajectory of the group
  (``turn_groups: index``), and ``A_k = (G_k - mean G_k over the set) / (std
  + eps)`` with ``scale_rewards`` as for ``grpo``.

Where this departs from the papers:

- Turns with the same index are the same state only when the environment is
  deterministic given the scenario and the agent's earlier answers do not
  change what it is asked next (a quiz whose questions are fixed per
  scenario). Otherwise turn ``k`` of two episodes answers different
  situations, and the set's mean is a baseline for "turn ``k`` of this
  scenario" in general, not for the state itself: still a valid baseline (it
  does not depend on the turn's own action), but a noisier one.
  ``turn_groups: observation`` groups a group's turns by identical observation
  instead (the tokens since the agent's last reply, :func:`same_observation`),
  as GiGPO's anchor states do, whatever their index. Identical tokens are the
  same state for the environment, not for the policy, which also sees the
  earlier turns.
- A comparison set of one turn (only one episode of the group reached turn
  ``k``, or saw that observation) has no baseline: the turn gets advantage 0.
- MT-GRPO and GiGPO add a turn-level advantage to the trajectory's outcome
  advantage; here ``A_k`` is the turn-level one alone, but ``G_k`` holds the
  outcome (the reward functions' score is part of the last turn's reward).
  With ``turn_gamma = 1`` turn 0's return is the trajectory's total reward,
  so turn 0 gets exactly ``grpo``'s advantage.
- ``scale_rewards: batch`` divides by the std of every turn return of this
  batch; with several processes it is this process's batch alone (``grpo``
  uses all ranks' rewards).
- A turn with no sampled token has nothing to credit and no value: it is not
  a time step of ``turn_gae`` (the next turn's value follows the previous
  one's directly), and it adds ``r_k = 0`` to earlier returns of ``turn_grpo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from turnrl.training.advantages import AdvantageEstimator, group_mean, scale_advantages
from turnrl.training.batch import RolloutBatch
from turnrl.training.value import state_values

if TYPE_CHECKING:
    from turnrl.training.config import AlgorithmConfig


@dataclass(frozen=True)
class TurnTable:
    """A batch's turns, as an (M, K) table: one row per trajectory, one column per turn index.

    Attributes:
        cell: Each sampled token's cell in the flattened table (``m * K + k``),
            -1 on other tokens. Shape (N, T).
        rewards: ``r_k``, the sum of the turn's token rewards; 0 where there is
            no turn. Shape (M, K).
        present: Whether trajectory ``m`` has a turn ``k`` with sampled tokens.
            Shape (M, K).
        first: Flat position (``row * T + t``) of each turn's first sampled
            token; ``N * T`` where there is no turn. Shape (M, K).
        last_row: Each trajectory's last row. Shape (M,).
        group_ids: Each trajectory's group. Shape (M,).
    """

    cell: torch.Tensor
    rewards: torch.Tensor
    present: torch.Tensor
    first: torch.Tensor
    last_row: torch.Tensor
    group_ids: torch.Tensor

    def broadcast(self, per_turn: torch.Tensor) -> torch.Tensor:
        """Give each sampled token its turn's value: (M, K) -> (N, T), 0 off the turns."""
        flat = torch.cat([per_turn.flatten(), per_turn.new_zeros(1)])  # cell -1 reads the 0
        return flat[self.cell]


def turn_ids_from_mask(
    loss_mask: torch.Tensor, trajectory_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Turn ids read from the loss mask: each maximal run of sampled tokens is one turn.

    Batches that do not carry ``turn_ids`` hold one row per trajectory, with
    environment or template tokens between consecutive turns, so the runs of
    the loss mask are the turns. ``build_batch`` always sets ``turn_ids``; this
    reads batches built by hand without them (two turns with no token between
    would be read as one here). Rows of one trajectory (consecutive, in turn order) continue
    its numbering.

    Args:
        loss_mask: Shape (N, T).
        trajectory_ids: Shape (N,), or None (one row per trajectory).

    Returns:
        Shape (N, T): the turn of each sampled token, -1 elsewhere.
    """
    mask = loss_mask > 0  # (N, T)
    previous = torch.nn.functional.pad(mask[:, :-1], (1, 0))  # (N, T)
    starts = mask & ~previous  # (N, T) the first token of each run
    runs = starts.sum(-1)  # (N,)
    turn = starts.long().cumsum(-1) - 1  # (N, T) the run each token is in
    if trajectory_ids is not None and len(mask):
        before = runs.cumsum(0) - runs  # (N,) runs in all earlier rows
        new = torch.ones_like(trajectory_ids, dtype=torch.bool)
        new[1:] = trajectory_ids[1:] != trajectory_ids[:-1]
        rows = torch.arange(len(mask), device=mask.device)
        first_row = torch.cummax(torch.where(new, rows, 0), 0).values  # (N,)
        turn = turn + (before - before[first_row])[:, None]
    return torch.where(mask, turn, -1)


def turn_table(batch: RolloutBatch) -> TurnTable:
    """The batch's turns: their rewards, where they start, whose they are.

    Reads ``batch.trajectory_ids`` and ``batch.turn_ids`` when the batch has
    them; otherwise each row is a trajectory and its turns are the runs of its
    loss mask (:func:`turn_ids_from_mask`). Token rewards off the sampled
    tokens are not counted (``build_batch`` puts none there).
    """
    n, width = batch.loss_mask.shape
    device = batch.loss_mask.device
    turn_ids = batch.turn_ids
    if turn_ids is None:  # a batch built by hand without them
        turn_ids = turn_ids_from_mask(batch.loss_mask, batch.trajectory_ids)
    trajectories = batch.trajectories()
    of_row, m = trajectories.of_row, trajectories.count  # (N,) 0..M-1
    sampled = (batch.loss_mask > 0) & (turn_ids >= 0)  # (N, T)
    k = int(turn_ids[sampled].max()) + 1 if bool(sampled.any()) else 1
    cell = torch.where(sampled, of_row[:, None] * k + turn_ids, -1)  # (N, T)
    picked = cell[sampled]  # (S,) the cells of the sampled tokens, row by row
    rewards = torch.zeros(m * k, dtype=batch.token_rewards.dtype, device=device)
    rewards.index_add_(0, picked, batch.token_rewards[sampled])
    present = torch.zeros(m * k, dtype=torch.bool, device=device)
    present[picked] = True
    positions = torch.arange(n * width, device=device).view(n, width)
    first = torch.full((m * k,), n * width, dtype=torch.long, device=device)
    first.scatter_reduce_(0, picked, positions[sampled], "amin")
    rows = torch.arange(n, device=device)
    last_row = torch.zeros(m, dtype=torch.long, device=device).scatter_reduce(
        0, of_row, rows, "amax"
    )
    return TurnTable(
        cell=cell,
        rewards=rewards.view(m, k),
        present=present.view(m, k),
        first=first.view(m, k),
        last_row=last_row,
        group_ids=batch.group_ids[last_row],
    )


def turn_values(table: TurnTable, values: torch.Tensor) -> torch.Tensor:
    """``V_k``: the value of the state each turn was sampled from. (N, T) -> (M, K), 0 if absent.

    That is ``values`` at the position before the turn's first sampled token
    (the prefix the turn was generated from).
    """
    before = state_values(values).flatten()  # (N * T,)
    padded = torch.cat([before, before.new_zeros(1)])  # position N * T: no turn
    return padded[table.first] * table.present


def turn_returns(rewards: torch.Tensor, present: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_k = sum_{j>=k} gamma^(j-k) r_j`` for each trajectory's turns. Shapes (M, K) -> (M, K)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (M,)
    for k in reversed(range(rewards.shape[1])):
        running = rewards[:, k] + gamma * running
        returns[:, k] = running
    return returns * present


def same_index(table: TurnTable) -> torch.Tensor:
    """Comparison sets of turn index: turn ``k`` of every trajectory of a group. Shape (M, K)."""
    k = table.present.shape[1]
    return table.group_ids[:, None] * k + torch.arange(k, device=table.present.device)


def same_observation(batch: RolloutBatch, table: TurnTable) -> torch.Tensor:
    """Comparison sets of observation: the turns of a group whose prompts end alike. Shape (M, K).

    A turn's observation is the token ids between the previous sampled token of
    its row and its own first token (for the first turn of a row, the whole
    prompt): what the environment said and the template added since the
    agent's last reply. Turns of one group with the same observation share a
    set, whatever their index (GiGPO's anchor states).
    """
    mask = batch.loss_mask > 0  # (N, T)
    width = mask.shape[1]
    after = torch.arange(1, width + 1, device=mask.device)  # (T,) one past each position
    ends = torch.cummax(torch.where(mask, after, 0), dim=1).values  # (N, T) last reply's end
    sets = torch.full_like(table.first, -1)  # (M, K)
    keys: dict[tuple[int, tuple[int, ...]], int] = {}
    for m, k in table.present.nonzero().tolist():
        row, start = divmod(int(table.first[m, k]), width)
        since = int(ends[row, start - 1]) if start > 0 else 0
        key = (int(table.group_ids[m]), tuple(batch.input_ids[row, since:start].tolist()))
        sets[m, k] = keys.setdefault(key, len(keys))
    return sets


def turn_grpo_advantages(
    returns: torch.Tensor,
    present: torch.Tensor,
    sets: torch.Tensor,
    *,
    scale: str = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Each turn's return against the other turns of its comparison set.

    Args:
        returns: Shape (M, K), ``G_k`` per trajectory and turn.
        present: Shape (M, K), which turns exist.
        sets: Shape (M, K), each turn's comparison set (:func:`same_index`,
            :func:`same_observation`); read where ``present``.
        scale: ``group`` (the comparison set's std), ``batch`` (the std of every
            turn return in the batch) or ``none``.
        eps: Added to the std before dividing.

    Returns:
        Shape (M, K); 0 where there is no turn, and for a turn alone in its set.
    """
    _, set_ids = torch.unique(sets[present], return_inverse=True)  # (P,) dense set ids
    g = returns[present]  # (P,)
    centered = g - group_mean(g, set_ids)  # (P,) 0 for a set of one
    advantages = torch.zeros_like(returns)
    if len(g):
        advantages[present] = scale_advantages(centered, g, set_ids, scale, eps)
    return advantages


def turn_gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    present: torch.Tensor,
    bootstrap: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE with one time step per turn.

    Args:
        rewards: Shape (M, K), ``r_k``.
        values: Shape (M, K), ``V_k``, the value of the state turn ``k`` was
            sampled from.
        present: Shape (M, K), which turns exist (an absent one is skipped).
        bootstrap: Shape (M,), ``V`` after the last turn: 0 for a terminated
            episode, the value of its next state for a truncated one.
        gamma: Discount per turn.
        lam: GAE's lambda.

    Returns:
        ``(advantages, returns)``, both (M, K) and 0 where there is no turn;
        ``returns = advantages + V_k``, the value targets.
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(bootstrap, dtype=rewards.dtype)  # (M,) A_{k+1}
    next_v = bootstrap.to(rewards.dtype)  # (M,) V_{k+1}
    for k in reversed(range(rewards.shape[1])):
        here = present[:, k]
        delta = rewards[:, k] + gamma * next_v - values[:, k]  # (M,)
        running = torch.where(here, delta + gamma * lam * running, running)
        advantages[:, k] = torch.where(here, running, 0.0)
        next_v = torch.where(here, values[:, k], next_v)
    return advantages, (advantages + values) * present


def turn_state_values(batch: RolloutBatch, values: torch.Tensor) -> torch.Tensor:
    """The value each token's turn-level advantage is measured from: ``V_k`` on turn k's tokens.

    ``turn_gae``'s value baseline in the algorithm table: the value targets are
    ``advantages + turn_state_values``, so every token of turn ``k`` is
    trained towards ``A_k + V_k``. Shapes: values (N, T) -> (N, T).
    """
    table = turn_table(batch)
    return table.broadcast(turn_values(table, values))


def make_turn_grpo(config: AlgorithmConfig) -> AdvantageEstimator:
    """The turn-level group baseline: ``turn_gamma``, ``turn_groups``, ``scale_rewards``.

    Credit: turn ``k`` gets its discounted return from turn ``k`` on, against
    the mean of its comparison set (0 when alone): the same turn index across
    its group (``turn_groups: index``) or the group's turns with the same
    observation (``observation``).
    """

    def turn_grpo(batch: RolloutBatch, values: torch.Tensor | None = None) -> torch.Tensor:
        table = turn_table(batch)
        returns = turn_returns(table.rewards, table.present, config.turn_gamma)  # (M, K)
        if config.turn_groups == "observation":
            sets = same_observation(batch, table)
        else:
            sets = same_index(table)
        how = config.scale_rewards or "group"
        advantages = turn_grpo_advantages(returns, table.present, sets, scale=how)
        return table.broadcast(advantages) * batch.loss_mask  # (N, T)

    return turn_grpo


def make_turn_gae(config: AlgorithmConfig) -> AdvantageEstimator:
    """Turn-level GAE: ``config.turn_gamma`` and ``config.gae_lambda``.

    Credit: turn ``k`` gets ``A_k``, the lambda-weighted sum of the turn-level
    TD errors ``r_j + turn_gamma V_{j+1} - V_j`` from turn ``k`` on.
    """

    def turn_gae(batch: RolloutBatch, values: torch.Tensor | None = None) -> torch.Tensor:
        if values is None:
            raise ValueError("the turn_gae estimator needs values from a value head")
        table = turn_table(batch)
        cut = (batch.truncated & ~batch.terminated)[table.last_row]  # (M,) bootstrap these
        if batch.next_values is None and bool(cut.any()):
            raise ValueError(
                "the turn_gae estimator bootstraps truncated episodes from the value of their "
                "next state, and the batch has none: build it with build_batch(..., "
                "encode=agent.encode) and score it with logprobs_and_values and a value model"
            )
        bootstrap = torch.zeros(len(cut), dtype=values.dtype, device=values.device)
        if batch.next_values is not None:
            bootstrap = torch.where(cut, batch.next_values[table.last_row].to(values.dtype), 0.0)
        advantages, _ = turn_gae_advantages(
            table.rewards,
            turn_values(table, values),
            table.present,
            bootstrap,
            gamma=config.turn_gamma,
            lam=config.gae_lambda,
        )
        return table.broadcast(advantages) * batch.loss_mask  # (N, T)

    return turn_gae
