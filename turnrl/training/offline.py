"""Trajectories from given conversations: demonstrations, replayed or foreign data.

:func:`trajectory_from_messages` turns a plain conversation into a
:class:`~turnrl.types.Trajectory` whose assistant turns carry token ids, so
the same batch builder and loss mask serve supervised warm-starts and
off-policy updates. Assistant text is tokenized once, here, and followed by
the end-of-turn token; everything else is tokenized by the agent's own
``encode`` (the chat template), exactly as during rollouts. The turns have no
behavior log-probabilities (``logprobs=None``): they were not sampled by the
current policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from turnrl.agents.transformers import TransformersAgent
from turnrl.types import Message, Scenario, Trajectory, Turn


def trajectory_from_messages(
    agent: TransformersAgent,
    messages: Sequence[Message],
    *,
    scenario: Scenario | None = None,
    reward: float | None = None,
) -> Trajectory:
    """A trajectory for ``messages`` with tokenized assistant turns.

    Args:
        agent: Supplies the tokenizer and chat template.
        messages: The conversation; it must contain an assistant message.
        scenario: The scenario it belongs to (default: one built from the
            messages before the first assistant turn).
        reward: Its reward, if known.

    Raises:
        ValueError: The conversation has no assistant message.
    """
    messages = list(messages)
    first = next((i for i, m in enumerate(messages) if m.role == "assistant"), None)
    if first is None:
        raise ValueError("the conversation has no assistant message to learn from")
    scenario = scenario or Scenario(id="offline", prompt=messages[:first])
    trajectory = Trajectory(scenario=scenario, initial_messages=messages[:first], reward=reward)
    conversation = messages[:first]
    eos = agent.eos_token_ids[0]
    for message in messages[first:]:
        if message.role != "assistant":
            trajectory.env_messages[-1].append(message)
            conversation.append(message)
            continue
        ids = message.token_ids
        if ids is None:
            ids = [*agent.tokenizer(message.content, add_special_tokens=False).input_ids, eos]
        sampled = Message(role="assistant", content=message.content, token_ids=list(ids))
        trajectory.turns.append(
            Turn(message=sampled, prompt_ids=agent.encode(conversation), completion_ids=list(ids))
        )
        trajectory.env_messages.append([])
        trajectory.env_rewards.append(0.0)
        conversation.append(sampled)
    trajectory.terminated = True
    return trajectory
