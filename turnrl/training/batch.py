"""Trajectories to padded tensors: the RolloutBatch.

Every tensor is indexed by token position ``t`` of the training sequence, so
``loss_mask[i, t]`` says whether token ``t`` of sequence ``i`` was sampled by
the agent, and ``behavior_logprobs[i, t]`` is the log-probability it was
sampled with. Position 0 is never a completion token (a turn always follows
a prompt), so per-token log-probs from the model (which predict token ``t``
from the logits at ``t - 1``) line up with these tensors directly.

A trajectory's sequence is its last turn's ``prompt_ids + completion_ids``.
Because the agent re-uses sampled tokens when it encodes a conversation (see
``turnrl.agents.transformers``), every earlier turn's prompt and completion
sit inside that sequence at known offsets; :func:`build_batch` checks this
instead of assuming it, and never re-tokenizes text.

Next states. An episode cut by a limit (truncated, not terminated) goes on
from the conversation including the environment's last answer, which the
training sequence stops short of. For GAE to bootstrap from the value of that
state, :func:`build_batch` (given the agent's ``encode``) also holds its token
ids, as the agent would prompt itself with them (see :func:`next_state_ids`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from turnrl.types import Message, Trajectory, TrajectoryGroup

Encoder = Callable[[Sequence[Message]], list[int]]
"""A conversation to the token ids of the agent's next prompt (``TransformersAgent.encode``)."""


@dataclass
class RolloutBatch:
    """Right-padded tensors for N trajectories of up to T tokens.

    Attributes:
        input_ids: Token ids. Shape (N, T).
        attention_mask: 1 on real tokens. Shape (N, T).
        loss_mask: 1.0 on agent-sampled tokens only. Shape (N, T).
        behavior_logprobs: Log-probs the tokens were sampled with (0 elsewhere).
            Shape (N, T).
        has_behavior_logprobs: Whether every turn came with its log-probs.
        token_rewards: Each turn's environment reward at the turn's last
            token, plus the trajectory's reward-function score at the last
            sampled token. Shape (N, T).
        rewards: Total reward of each trajectory. Shape (N,).
        group_ids: Which group (scenario) each trajectory belongs to. Shape (N,).
        terminated: Episode ended in a terminal state. Shape (N,).
        truncated: Episode was cut by a limit. Shape (N,).
        old_logprobs: Log-probs of the policy before this step's updates, the
            denominator of the PPO ratio (the behavior log-probs for fresh
            rollouts). Shape (N, T). Set by the trainer before the update.
        ref_logprobs: Log-probs under the reference model (or GVPO's
            ``pi_theta'``). Shape (N, T). Set by the trainer when needed.
        values: The critic's value of each prefix before the update (gae).
            Shape (N, T).
        advantages: The estimator's output. Shape (N, T).
        returns: Value targets (gae). Shape (N, T).
        reward_std: The std of the rewards of the whole step when it spans
            several processes (for ``scale_rewards="batch"``); None: this batch's.
        next_input_ids: Token ids of the state after each truncated episode's
            last turn (see :func:`next_state_ids`); all padding on other rows.
            Shape (N, S). None when no row has one.
        next_attention_mask: 1 on the real tokens of ``next_input_ids``. Shape (N, S).
        next_values: The critic's value of each row's next state (0 on rows
            without one), GAE's bootstrap. Shape (N,). Set by the trainer.
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
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    reward_std: float | None = None
    next_input_ids: torch.Tensor | None = None
    next_attention_mask: torch.Tensor | None = None
    next_values: torch.Tensor | None = None

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

    @property
    def num_tokens(self) -> int:
        """Number of agent-sampled tokens (the loss-mask total)."""
        return int(self.loss_mask.sum())


class TokenMismatchError(ValueError):
    """A turn's tokens are not where the trajectory's final sequence says."""


def sequence_layout(trajectory: Trajectory) -> tuple[list[int], list[tuple[int, int]]]:
    """The training sequence of a trajectory and each turn's completion span.

    Returns:
        ``(token_ids, spans)`` where ``spans[k] = (start, end)`` locates turn
        ``k``'s completion tokens in ``token_ids``.

    Raises:
        TokenMismatchError: A turn's prompt is not a prefix of the final
            sequence, or its completion is not where expected.
    """
    if not trajectory.turns:
        raise TokenMismatchError(f"trajectory of scenario {trajectory.scenario.id!r} has no turns")
    last = trajectory.turns[-1]
    ids = last.prompt_ids + last.completion_ids
    spans = []
    for k, turn in enumerate(trajectory.turns):
        start, end = len(turn.prompt_ids), len(turn.prompt_ids) + len(turn.completion_ids)
        if ids[:start] != turn.prompt_ids or ids[start:end] != turn.completion_ids:
            raise TokenMismatchError(
                f"scenario {trajectory.scenario.id!r}, turn {k}: its tokens are not a prefix of "
                "the final turn's sequence; build later prompts by re-using sampled tokens "
                "(TransformersAgent.encode does)"
            )
        spans.append((start, end))
    return ids, spans


def next_state_ids(trajectory: Trajectory, encode: Encoder) -> list[int]:
    """Token ids of the state after the last turn, as the agent's next prompt would hold them.

    That is the conversation including the environment's last answer, rendered
    with the generation prompt: the training sequence (the last turn's prompt
    and completion) followed by the text the chat template adds for the last
    answer. The tail is taken from ``encode`` of the whole conversation after
    the last completion, so tools rendered into the head of the prompt (which
    ``encode`` is not given here) do not change it.

    Raises:
        TokenMismatchError: ``encode`` does not keep the last completion's tokens.
    """
    last = trajectory.turns[-1]
    messages = list(trajectory.initial_messages)
    for k, turn in enumerate(trajectory.turns):
        if k == len(trajectory.turns) - 1:
            head = encode(messages)  # the last turn's prompt, as encode renders it
        # The sampled ids, even for turns loaded without them on the message.
        messages.append(turn.message.model_copy(update={"token_ids": turn.completion_ids}))
        if k < len(trajectory.env_messages):
            messages.extend(trajectory.env_messages[k])
    full = encode(messages)
    body = len(head) + len(last.completion_ids)
    if full[:body] != head + last.completion_ids:
        raise TokenMismatchError(
            f"scenario {trajectory.scenario.id!r}: encoding the conversation with its last "
            "observation does not keep the last turn's sampled tokens; build prompts by "
            "re-using sampled tokens (TransformersAgent.encode does)"
        )
    return last.prompt_ids + last.completion_ids + full[body:]


def build_batch(
    groups: Sequence[TrajectoryGroup],
    *,
    pad_token_id: int,
    device: torch.device | str = "cpu",
    encode: Encoder | None = None,
) -> RolloutBatch:
    """Stack the non-failed trajectories of ``groups`` into a RolloutBatch.

    Group ids are the positions of the groups in ``groups``.

    Args:
        groups: The groups to train on.
        pad_token_id: Fills the padding.
        device: Where the tensors go.
        encode: The agent's ``encode``: given, the batch holds the next state
            of every truncated (and not terminated) episode, for GAE's
            bootstrap (``next_input_ids``).

    Raises:
        ValueError: There is no trajectory to train on.
        TokenMismatchError: See :func:`sequence_layout` and :func:`next_state_ids`.
    """
    rows = [(g, t) for g, group in enumerate(groups) for t in group.trajectories if not t.failed]
    if not rows:
        raise ValueError("no trajectories to build a batch from (all failed or none collected)")
    layouts = [sequence_layout(t) for _, t in rows]
    n, width = len(rows), max(len(ids) for ids, _ in layouts)

    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width))
    behavior = torch.zeros((n, width))
    token_rewards = torch.zeros((n, width))
    has_behavior = True
    for i, ((_, trajectory), (ids, spans)) in enumerate(zip(rows, layouts, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        for k, ((start, end), turn) in enumerate(zip(spans, trajectory.turns, strict=True)):
            loss_mask[i, start:end] = 1.0
            if turn.logprobs is None:
                has_behavior = False
            else:
                behavior[i, start:end] = torch.tensor(turn.logprobs)
            if end > start and k < len(trajectory.env_rewards):
                token_rewards[i, end - 1] += trajectory.env_rewards[k]
        last_end = spans[-1][1]
        if last_end > 0:  # reward-function score lands on the last sampled token
            token_rewards[i, last_end - 1] += _total(trajectory) - trajectory.env_return

    next_ids = next_mask = None
    cut = [t.truncated and not t.terminated for _, t in rows]
    if encode is not None and any(cut):
        states = [
            next_state_ids(t, encode) if c else [] for (_, t), c in zip(rows, cut, strict=True)
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
        rewards=torch.tensor([_total(t) for _, t in rows], dtype=torch.float32),
        group_ids=torch.tensor([g for g, _ in rows], dtype=torch.long),
        terminated=torch.tensor([t.terminated for _, t in rows]),
        truncated=torch.tensor([t.truncated for _, t in rows]),
        next_input_ids=next_ids,
        next_attention_mask=next_mask,
    ).to(device)


def _width(attention_mask: torch.Tensor | None) -> int:
    """The longest row of an (N, T) attention mask (0 for no rows or no mask)."""
    if attention_mask is None or not len(attention_mask):
        return 0
    return int(attention_mask.sum(-1).max())


def _total(trajectory: Trajectory) -> float:
    return trajectory.env_return if trajectory.reward is None else trajectory.reward
