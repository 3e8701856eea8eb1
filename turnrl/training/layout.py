"""Where a trajectory's tokens go: its training rows (step-wise samples) and its next state.

A trajectory trains as few sequences as its turns allow. Turn ``k`` *extends*
turn ``k - 1`` when its prompt starts with turn ``k - 1``'s prompt and
completion, as it does when the agent re-uses sampled tokens to encode the
whole conversation (``TransformersAgent.encode``). Each maximal run of turns
that extend one another is one row: the run's last prompt and completion, in
which every turn of the run sits at known offsets, so nothing is computed
twice. A turn whose prompt does not extend the previous sequence (the
environment's ``agent_view`` dropped, summarised or edited earlier turns, or a
chat template rewrote them) starts a new row, with its exact prompt and
completion tokens: nothing is re-tokenized. A trajectory that always extends
is one row, as before step-wise samples existed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from turnrl.types import Message, Trajectory

Encoder = Callable[[Sequence[Message]], list[int]]
"""A conversation to the token ids of the agent's next prompt (``TransformersAgent.encode``)."""


class TokenMismatchError(ValueError):
    """A trajectory's tokens cannot be laid out as its turns say."""


class Row(NamedTuple):
    """One training sequence of a trajectory.

    Attributes:
        token_ids: The sequence: its last turn's prompt and completion ids.
        turns: The index of each of its turns in the trajectory, in order.
        spans: Each turn's completion span ``(start, end)`` in ``token_ids``.
    """

    token_ids: list[int]
    turns: list[int]
    spans: list[tuple[int, int]]


def extends(previous: Sequence[int], prompt: Sequence[int]) -> bool:
    """Whether ``prompt`` starts with ``previous`` (a turn's prompt + completion)."""
    return len(prompt) >= len(previous) and list(prompt[: len(previous)]) == list(previous)


def trajectory_rows(trajectory: Trajectory) -> list[Row]:
    """The training rows of ``trajectory``, in turn order (see the module docstring).

    Raises:
        TokenMismatchError: The trajectory has no turns.
    """
    turns = trajectory.turns
    if not turns:
        raise TokenMismatchError(f"trajectory of scenario {trajectory.scenario.id!r} has no turns")
    runs: list[list[int]] = [[0]]
    for k in range(1, len(turns)):
        previous = turns[k - 1].prompt_ids + turns[k - 1].completion_ids
        if extends(previous, turns[k].prompt_ids):
            runs[-1].append(k)
        else:
            runs.append([k])
    rows = []
    for run in runs:
        last = turns[run[-1]]
        spans = [
            (len(turns[k].prompt_ids), len(turns[k].prompt_ids) + len(turns[k].completion_ids))
            for k in run
        ]
        rows.append(Row(last.prompt_ids + last.completion_ids, run, spans))
    return rows


def next_state_ids(trajectory: Trajectory, encode: Encoder) -> list[int]:
    """Token ids of the state after the last turn, as the agent would be prompted with it.

    That is the messages of the last prompt (``Turn.view`` when the environment
    showed one, else the conversation up to the last turn), the last reply and
    the environment's last answer, encoded. When the template keeps the last
    reply as it was sampled (prefix mode), the state continues the trajectory's
    last row: its prompt and completion ids, then the text the template adds
    for the last answer (taken from ``encode`` after the last completion, so
    tools rendered into the head of the prompt, which ``encode`` is not given
    here, do not change it). When the template rewrites the last reply once an
    answer follows it (a Qwen3-style template drops its reasoning), the state
    is that encoding itself: what the model would see, which no longer extends
    the row; the critic values it on its own either way. A view that would
    drop more on the next turn is not asked for: no environment is at hand once
    the episode is over.
    """
    last = trajectory.turns[-1]
    messages = list(trajectory.initial_messages)
    for k, turn in enumerate(trajectory.turns[:-1]):
        messages.append(turn.message.model_copy(update={"token_ids": turn.completion_ids}))
        if k < len(trajectory.env_messages):
            messages.extend(trajectory.env_messages[k])
    if last.view is not None:
        messages = list(last.view)
    head = encode(messages)  # the last turn's prompt, as encode renders it
    # The sampled ids, even for turns loaded without them on the message.
    messages.append(last.message.model_copy(update={"token_ids": last.completion_ids}))
    if len(trajectory.env_messages) >= len(trajectory.turns):
        messages.extend(trajectory.env_messages[len(trajectory.turns) - 1])
    full = encode(messages)
    body = len(head) + len(last.completion_ids)
    if full[:body] != head + last.completion_ids:
        return full  # the template rewrote the last reply: the state starts afresh
    return last.prompt_ids + last.completion_ids + full[body:]
