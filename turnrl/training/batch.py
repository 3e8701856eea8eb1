"""Trajectories to padded tensors: the RolloutBatch.

Every tensor is indexed by token position ``t`` of the training sequence, so
``loss_mask[i, t]`` says whether token ``t`` of sequence ``i`` was sampled by
the agent, and ``behavior_logprobs[i, t]`` is the log-probability it was
sampled with. Position 0 is never a completion token (a turn always follows
a prompt), so per-token log-probs from the model (which predict token ``t``
from the logits at ``t - 1``) line up with these tensors directly.

Rows and trajectories. A trajectory's sequence is its last turn's
``prompt_ids + completion_ids``: because the agent re-uses sampled tokens when
it encodes a conversation (see ``turnrl.agents.transformers``), every earlier
turn sits inside it at known offsets. When a turn's prompt is not an
extension of the previous turn's (the environment's ``agent_view`` rewrote
the history), the trajectory becomes several rows, step-wise samples, each
with its exact tokens (:mod:`turnrl.training.layout`); nothing is
re-tokenized. ``trajectory_ids`` says which trajectory each row belongs to
(its rows are consecutive, in turn order), ``turn_ids`` which turn each
sampled token belongs to, and :meth:`RolloutBatch.trajectories` indexes them:
every estimator and loss counts a trajectory once, however many rows it has.

Next states. An episode cut by a limit (truncated, not terminated) goes on
from the conversation including the environment's last answer, which the
training sequence stops short of. For GAE to bootstrap from the value of that
state, :func:`build_batch` (given the agent's ``encode``) also holds its token
ids, as the agent would prompt itself with them (see :func:`next_state_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from turnrl.training.layout import (
    Encoder,
    Row,
    TokenMismatchError,
    next_state_ids,
    trajectory_rows,
)
from turnrl.types import Trajectory, TrajectoryGroup

__all__ = [
    "Encoder",
    "RolloutBatch",
    "TokenMismatchError",
    "TrajectoryIndex",
    "build_batch",
    "next_state_ids",
]


@dataclass(frozen=True)
class TrajectoryIndex:
    """The rows of a batch grouped by trajectory, numbered in order of first row.

    Attributes:
        of_row: Each row's trajectory, 0..count-1. Shape (N,).
        first: Each trajectory's first row. Shape (count,).
        count: The number of trajectories.
    """

    of_row: torch.Tensor
    first: torch.Tensor
    count: int

    @classmethod
    def of(cls, trajectory_ids: torch.Tensor | None, rows: int) -> TrajectoryIndex:
        """The index of rows labelled ``trajectory_ids`` (None: one trajectory per row)."""
        device = trajectory_ids.device if trajectory_ids is not None else None
        identity = torch.arange(rows, device=device)
        if trajectory_ids is None or len(torch.unique(trajectory_ids)) == rows:
            return cls(identity, identity, rows)
        ids, inverse = torch.unique(trajectory_ids, return_inverse=True)  # sorted ids
        first = torch.full((len(ids),), rows, device=device).scatter_reduce(
            0, inverse, identity, "amin"
        )
        order = torch.argsort(first)  # trajectories numbered by first row
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(ids), device=device)
        return cls(rank[inverse], first[order], len(ids))

    @property
    def is_identity(self) -> bool:
        """Whether every trajectory has one row, in row order."""
        return self.count == len(self.of_row)

    def pick(self, x: torch.Tensor) -> torch.Tensor:
        """A value all rows of a trajectory share, once per trajectory. (N, ...) -> (M, ...)."""
        return x if self.is_identity else x[self.first]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over each trajectory's rows. (N, ...) -> (M, ...)."""
        if self.is_identity:
            return x
        out = torch.zeros((self.count, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return out.index_add(0, self.of_row, x)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """A per-trajectory value given to each of its rows. (M, ...) -> (N, ...)."""
        return x if self.is_identity else x[self.of_row]


@dataclass
class RolloutBatch:
    """Right-padded tensors for N rows of up to T tokens, from M <= N trajectories.

    Attributes:
        input_ids: Token ids. Shape (N, T).
        attention_mask: 1 on real tokens. Shape (N, T).
        loss_mask: 1.0 on agent-sampled tokens only. Shape (N, T).
        behavior_logprobs: Log-probs the tokens were sampled with (0 elsewhere).
            Shape (N, T).
        has_behavior_logprobs: Whether every turn came with its log-probs.
        token_rewards: Each turn's environment reward at the turn's last
            token, plus the trajectory's reward-function score at the last
            sampled token of its last row. Shape (N, T).
        rewards: Total reward of each row's trajectory. Shape (N,).
        group_ids: Which group (scenario) each row's trajectory belongs to. Shape (N,).
        terminated: Episode ended in a terminal state (each row of it). Shape (N,).
        truncated: Episode was cut by a limit (each row of it). Shape (N,).
        old_logprobs: Log-probs of the policy before this step's updates, the
            denominator of the PPO ratio: the behavior log-probs for fresh
            rollouts, or ``trainer_logprobs`` under a mismatch correction.
            Shape (N, T). Set by the trainer before the update.
        trainer_logprobs: The trainer's own log-probs of the sampled tokens
            before the update, when the mismatch with the engine's is measured
            (:mod:`turnrl.training.mismatch`). Shape (N, T).
        is_weights: Detached importance weights the policy loss multiplies each
            token's term by (``mismatch.correction``); None: no correction.
            Shape (N, T).
        ref_logprobs: Log-probs under the reference model (or GVPO's
            ``pi_theta'``). Shape (N, T). Set by the trainer when needed.
        values: The critic's value of each prefix before the update (gae).
            Shape (N, T).
        advantages: The estimator's output. Shape (N, T).
        returns: Value targets (gae). Shape (N, T).
        reward_std: The std of the rewards of the whole step when it spans
            several processes (for ``scale_rewards="batch"``); None: this batch's.
        next_input_ids: Token ids of the state after each truncated episode's
            last turn, on its last row (see :func:`next_state_ids`); all
            padding on other rows. Shape (N, S). None when no row has one.
        next_attention_mask: 1 on the real tokens of ``next_input_ids``. Shape (N, S).
        next_values: The critic's value of each row's next state (0 on rows
            without one), GAE's bootstrap. Shape (N,). Set by the trainer.
        trajectory_ids: Which trajectory each row belongs to; a trajectory's
            rows are consecutive and in turn order. Shape (N,). None: one row
            per trajectory (a batch built by hand).
        turn_ids: The index, within its trajectory, of the turn each sampled
            token belongs to; -1 elsewhere. Shape (N, T). None when unknown.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    behavior_logprobs: torch.Tensor
    has_behavior_logprobs: bool
    token_rewards: torch.Tensor
    rewards: torch.Tensor
    group_ids: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    trainer_logprobs: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    reward_std: float | None = None
    next_input_ids: torch.Tensor | None = None
    next_attention_mask: torch.Tensor | None = None
    next_values: torch.Tensor | None = None
    trajectory_ids: torch.Tensor | None = None
    turn_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def _map(self, fn) -> RolloutBatch:
        values = {
            f.name: fn(getattr(self, f.name))
            if isinstance(getattr(self, f.name), torch.Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        return RolloutBatch(**values)

    def to(self, device: torch.device | str) -> RolloutBatch:
        """The batch on ``device``."""
        return self._map(lambda t: t.to(device))

    def select(self, index: torch.Tensor | slice) -> RolloutBatch:
        """Rows ``index``, trimmed to their longest sequence (less padding to compute)."""
        picked = self._map(lambda t: t[index])
        width = _width(picked.attention_mask)
        next_width = _width(picked.next_attention_mask)
        values = {}
        for f in fields(picked):
            value = getattr(picked, f.name)
            if isinstance(value, torch.Tensor) and value.dim() == 2:
                value = value[:, : next_width if f.name.startswith("next_") else width]
            values[f.name] = value
        return RolloutBatch(**values)

    def trajectories(self) -> TrajectoryIndex:
        """The rows grouped by trajectory (see :class:`TrajectoryIndex`)."""
        return TrajectoryIndex.of(self.trajectory_ids, len(self))

    @property
    def num_tokens(self) -> int:
        """Number of agent-sampled tokens (the loss-mask total)."""
        return int(self.loss_mask.sum())


def build_batch(
    groups: Sequence[TrajectoryGroup],
    *,
    pad_token_id: int,
    device: torch.device | str = "cpu",
    encode: Encoder | None = None,
) -> RolloutBatch:
    """Stack the non-failed trajectories of ``groups`` into a RolloutBatch, row by row.

    Group ids are the positions of the groups in ``groups``; trajectory ids
    number the trajectories in order. A trajectory whose turns all extend one
    another is one row; otherwise it is one row per run of turns that do (see
    :mod:`turnrl.training.layout`).

    Args:
        groups: The groups to train on.
        pad_token_id: Fills the padding.
        device: Where the tensors go.
        encode: The agent's ``encode``: given, the batch holds the next state
            of every truncated (and not terminated) episode on its last row,
            for GAE's bootstrap (``next_input_ids``).

    Raises:
        ValueError: There is no trajectory to train on.
        TokenMismatchError: A trajectory has no turns.
    """
    kept = [(g, t) for g, group in enumerate(groups) for t in group.trajectories if not t.failed]
    if not kept:
        raise ValueError("no trajectories to build a batch from (all failed or none collected)")
    # (trajectory index, group, trajectory, row, whether it is the trajectory's last row)
    rows: list[tuple[int, int, Trajectory, Row, bool]] = []
    for j, (g, trajectory) in enumerate(kept):
        layout = trajectory_rows(trajectory)
        rows += [(j, g, trajectory, row, r == len(layout) - 1) for r, row in enumerate(layout)]
    n, width = len(rows), max(len(row.token_ids) for *_, row, _ in rows)

    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width))
    behavior = torch.zeros((n, width))
    token_rewards = torch.zeros((n, width))
    turn_ids = torch.full((n, width), -1, dtype=torch.long)
    has_behavior = True
    for i, (_, _, trajectory, row, last_row) in enumerate(rows):
        ids = row.token_ids
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        for k, (start, end) in zip(row.turns, row.spans, strict=True):
            turn = trajectory.turns[k]
            loss_mask[i, start:end] = 1.0
            turn_ids[i, start:end] = k
            if turn.logprobs is None:
                has_behavior = False
            else:
                behavior[i, start:end] = torch.tensor(turn.logprobs)
            if end > start and k < len(trajectory.env_rewards):
                token_rewards[i, end - 1] += trajectory.env_rewards[k]
        last_end = row.spans[-1][1]
        if last_row and last_end > 0:  # reward-function score lands on the last sampled token
            token_rewards[i, last_end - 1] += _total(trajectory) - trajectory.env_return

    next_ids = next_mask = None
    cut = [last and t.truncated and not t.terminated for _, _, t, _, last in rows]
    if encode is not None and any(cut):
        states = [
            next_state_ids(t, encode) if c else []
            for (_, _, t, _, _), c in zip(rows, cut, strict=True)
        ]
        next_ids = torch.full((n, max(map(len, states))), pad_token_id, dtype=torch.long)
        next_mask = torch.zeros_like(next_ids)
        for i, state in enumerate(states):
            next_ids[i, : len(state)] = torch.tensor(state, dtype=torch.long)
            next_mask[i, : len(state)] = 1

    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        behavior_logprobs=behavior,
        has_behavior_logprobs=has_behavior,
        token_rewards=token_rewards,
        rewards=torch.tensor([_total(t) for _, _, t, _, _ in rows], dtype=torch.float32),
        group_ids=torch.tensor([g for _, g, *_ in rows], dtype=torch.long),
        terminated=torch.tensor([t.terminated for _, _, t, _, _ in rows]),
        truncated=torch.tensor([t.truncated for _, _, t, _, _ in rows]),
        next_input_ids=next_ids,
        next_attention_mask=next_mask,
        trajectory_ids=torch.tensor([j for j, *_ in rows], dtype=torch.long),
        turn_ids=turn_ids,
    ).to(device)


def _width(attention_mask: torch.Tensor | None) -> int:
    """The longest row of an (N, T) attention mask (0 for no rows or no mask)."""
    if attention_mask is None or not len(attention_mask):
        return 0
    return int(attention_mask.sum(-1).max())


def _total(trajectory: Trajectory) -> float:
    return trajectory.env_return if trajectory.reward is None else trajectory.reward
