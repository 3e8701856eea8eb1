"""Trajectories from given conversations: demonstrations, replayed or foreign data.

:func:`trajectory_from_messages` turns a plain conversation into a
:class:`~turnrl.types.Trajectory` whose assistant turns carry token ids, so
the same batch builder and loss mask serve supervised warm-starts and
off-policy updates. Assistant text is tokenized once, here, and followed by
the end-of-turn token; everything else is tokenized by the agent's own
``encode`` (the chat template), exactly as during rollouts. The turns have no
behavior log-probabilities (``logprobs=None``): they were not sampled by the
current policy.

:func:`groups_from_completions` builds whole TrajectoryGroups from plain
``(prompt, completions, rewards)`` records, for ``await trainer.step(groups)``:
a replay buffer, human demonstrations, another model's outputs. GVPO (Zhang et
al. 2025, arXiv 2504.19599) is derived for samples from any distribution, so
it trains on such groups directly; estimators with a PPO ratio need the
behavior log-probs and refuse them (see ``turnrl.training.update.logprobs_and_values``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from turnrl.agents.transformers import TransformersAgent
from turnrl.tools import tool_schemas
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, Turn

Prompt = str | Sequence[Message]
Completion = str | Sequence[Message]


def trajectory_from_messages(
    agent: TransformersAgent,
    messages: Sequence[Message],
    *,
    scenario: Scenario | None = None,
    reward: float | None = None,
    tools: Sequence[Any] | None = None,
) -> Trajectory:
    """A trajectory for ``messages`` with tokenized assistant turns.

    Args:
        agent: Supplies the tokenizer and chat template.
        messages: The conversation; it must contain an assistant message.
        scenario: The scenario it belongs to (default: one built from the
            messages before the first assistant turn).
        reward: Its reward, if known.
        tools: The tools on offer (:class:`~turnrl.tools.Tool` objects or JSON
            schemas), rendered into every prompt by the chat template as in a
            rollout of a tool environment (pass ``env.tools``).

    Raises:
        ValueError: The conversation has no assistant message.
    """
    messages = list(messages)
    schemas = tool_schemas(tools)
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
            Turn(
                message=sampled,
                prompt_ids=agent.encode(conversation, tools=schemas),
                completion_ids=list(ids),
            )
        )
        trajectory.env_messages.append([])
        trajectory.env_rewards.append(0.0)
        conversation.append(sampled)
    trajectory.terminated = True
    return trajectory


def groups_from_completions(
    agent: TransformersAgent,
    records: Iterable[tuple[Prompt, Sequence[Completion], Sequence[float]]],
) -> list[TrajectoryGroup]:
    """TrajectoryGroups from ``(prompt, completions, rewards)`` records.

    Args:
        agent: Supplies the tokenizer and chat template.
        records: For each prompt (a user message's text, or a list of
            messages), its completions (an assistant reply's text, or a list of
            messages continuing the conversation, e.g. assistant / user /
            assistant) and one reward per completion.

    Returns:
        One group per record; every trajectory has its reward set and no
        behavior log-probs. The scenario id is a hash of the prompt.

    Raises:
        ValueError: A record's completions and rewards differ in number, or
            a completion has no assistant message.
    """
    groups = []
    for k, (prompt, completions, rewards) in enumerate(records):
        if len(completions) != len(rewards):
            raise ValueError(
                f"record {k}: {len(completions)} completions but {len(rewards)} rewards"
            )
        opening = (
            [Message(role="user", content=prompt)] if isinstance(prompt, str) else list(prompt)
        )
        digest = hashlib.sha1("\n".join(m.content for m in opening).encode()).hexdigest()[:12]
        scenario = Scenario(id=f"offline-{digest}", prompt=opening)
        trajectories = []
        for completion, reward in zip(completions, rewards, strict=True):
            continuation = (
                [Message(role="assistant", content=completion)]
                if isinstance(completion, str)
                else list(completion)
            )
            trajectories.append(
                trajectory_from_messages(
                    agent, opening + continuation, scenario=scenario, reward=float(reward)
                )
            )
        groups.append(TrajectoryGroup(scenario=scenario, trajectories=trajectories))
    return groups
