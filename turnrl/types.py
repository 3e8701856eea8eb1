"""The data that flows through turnrl: messages, turns, trajectories, scenarios.

These are pydantic models because they cross the edges of the program: users
build them, environments return them, and trajectories are saved to and loaded
from JSONL. ``StepResult``, what an environment's ``step`` returns, is a
NamedTuple, so that it unpacks like Gymnasium's 5-tuple. Tensor bundles
(``RolloutBatch``) are plain dataclasses and live in ``turnrl.training.batch``.

Token in, token out: an assistant ``Turn`` keeps the exact token ids that were
fed to the model (``prompt_ids``) and the exact ids it sampled
(``completion_ids``) with their log-probabilities. The assistant ``Message`` of
a turn carries the sampled ids too (``Message.token_ids``), so that an agent
asked to continue a conversation re-uses them instead of re-tokenizing the
decoded text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length"]


class Message(BaseModel):
    """One chat message, as a chat template expects it.

    Attributes:
        role: Who speaks: ``system``, ``user``, ``assistant`` or ``tool``.
        content: The text.
        token_ids: For assistant messages sampled by a turnrl agent, the exact
            sampled token ids (see the module docstring). ``None`` otherwise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str
    token_ids: list[int] | None = Field(
        default=None, description="Sampled token ids of an assistant message, if known."
    )

    def to_chat(self) -> dict[str, str]:
        """The message as a ``{"role", "content"}`` dict for a chat template."""
        return {"role": self.role, "content": self.content}


def system(content: str) -> Message:
    """A system message."""
    return Message(role="system", content=content)


def user(content: str) -> Message:
    """A user message."""
    return Message(role="user", content=content)


def assistant(content: str) -> Message:
    """An assistant message (not sampled, so without token ids)."""
    return Message(role="assistant", content=content)


class Scenario(BaseModel):
    """One task instance: what the environment needs to start an episode.

    Attributes:
        id: A stable identifier, used for grouping, logging and splits.
        prompt: Opening messages (system and/or user). Environments may use
            them as the first observation.
        data: Task-specific values (the expected answer, a persona, a seed).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: list[Message] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)


class StepResult(NamedTuple):
    """What ``Environment.step`` returns; unpacks like Gymnasium's 5-tuple.

    ``terminated`` and ``truncated`` mean different things to the learner, which
    is why they are never merged:

    * ``terminated``: the task reached a terminal state (solved, failed for
      good, the user left, or a limit that is one of the task's own rules ran
      out: the last of five allowed guesses). Nothing follows, so the value of
      the next state is 0 and advantage estimators must not bootstrap past it.
    * ``truncated``: the episode was cut by a limit that is not part of the
      task (a turn budget set from outside, time, tokens). The task could have
      gone on, so GAE bootstraps from the value of the next state instead of
      assuming 0.
      Treating a truncation as a termination teaches the critic that the
      state right before a limit is worthless, which biases the values.

    Both may be False (the episode goes on); if both are True, ``terminated``
    wins for bootstrapping.

    Attributes:
        observation: New messages to append after the assistant's message
            (user, tool or system turns); ``[]`` is fine.
        reward: The reward for the assistant's last message.
        terminated: The task reached a terminal state: no bootstrapping.
        truncated: The episode was cut by a limit: bootstrapping allowed.
        info: Diagnostics (logged, and the last one kept on the trajectory).
    """

    observation: list[Message]
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


class Turn(BaseModel):
    """One assistant turn, with the tokens behind it.

    Attributes:
        message: The assistant message (its ``token_ids`` equal
            ``completion_ids``).
        prompt_ids: Exact token ids the model was conditioned on.
        completion_ids: Exact sampled token ids, including a final eos token
            when generation stopped on one.
        logprobs: Log-probability of each completion token under the sampling
            policy (temperature applied, no top-p truncation); ``None`` for
            turns that were not sampled by the current run (demonstrations,
            replayed data).
        finish_reason: ``stop`` (an eos token) or ``length`` (max new tokens).
        policy_version: The version of the policy weights the turn was sampled
            under (the trainer's step count when the engine last took new
            weights; see :mod:`turnrl.agents.inference`); ``None`` for turns no
            engine sampled (demonstrations, scripted replies).
        view: The messages the agent was prompted with, when the environment's
            ``agent_view`` showed it something other than the whole conversation
            (earlier turns dropped, summarised or edited); ``None`` when it saw
            the whole conversation. ``prompt_ids`` are the tokens of this view.
    """

    model_config = ConfigDict(extra="forbid")

    message: Message
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: FinishReason = "stop"
    policy_version: int | None = Field(
        default=None, description="Policy version the turn was sampled under, if sampled."
    )
    view: list[Message] | None = Field(
        default=None,
        description="What the agent was prompted with, when it was not the whole conversation.",
    )


class Trajectory(BaseModel):
    """One episode: a scenario, the agent's turns and the environment's answers.

    The conversation reads ``initial_messages``, then for each turn ``k`` the
    assistant message ``turns[k].message`` followed by ``env_messages[k]``. It
    is always the whole conversation; a turn prompted with less (an
    environment's ``agent_view``) keeps what it saw in ``Turn.view``.

    Attributes:
        scenario: The scenario the episode started from.
        initial_messages: The observation returned by ``reset``.
        turns: The agent's turns, in order.
        env_messages: For each turn, the messages the environment answered with.
        env_rewards: For each turn, the reward returned by ``step``.
        terminated: The episode reached a terminal state (no bootstrapping).
        truncated: The episode was cut short by a limit (turns, time, tokens).
        reward: The trajectory's total reward, set by scoring.
        reward_components: Each reward function's score, by name.
        error: Why the episode failed (environment or reward raised), if it did.
        info: The last ``info`` dict of the environment, JSON-serializable parts.
    """

    model_config = ConfigDict(extra="forbid")

    scenario: Scenario
    initial_messages: list[Message] = Field(default_factory=list)
    turns: list[Turn] = Field(default_factory=list)
    env_messages: list[list[Message]] = Field(default_factory=list)
    env_rewards: list[float] = Field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    reward: float | None = None
    reward_components: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    info: dict[str, Any] = Field(default_factory=dict)

    @property
    def conversation(self) -> list[Message]:
        """All messages in order (each turn's own prompt may have held less: ``Turn.view``)."""
        messages = list(self.initial_messages)
        for k, turn in enumerate(self.turns):
            messages.append(turn.message)
            if k < len(self.env_messages):
                messages.extend(self.env_messages[k])
        return messages

    @property
    def failed(self) -> bool:
        """True if the environment or a reward function raised."""
        return self.error is not None

    @property
    def env_return(self) -> float:
        """Sum of the per-turn environment rewards."""
        return float(sum(self.env_rewards))

    @property
    def final_response(self) -> str:
        """The text of the last assistant turn ('' if there is none)."""
        return self.turns[-1].message.content if self.turns else ""


class TrajectoryGroup(BaseModel):
    """The G trajectories sampled for one scenario (the unit of group estimators)."""

    model_config = ConfigDict(extra="forbid")

    scenario: Scenario
    trajectories: list[Trajectory]

    def __len__(self) -> int:
        return len(self.trajectories)

    def __iter__(self) -> Iterator[Trajectory]:  # type: ignore[override]
        return iter(self.trajectories)

    @property
    def ok(self) -> list[Trajectory]:
        """The trajectories that did not fail."""
        return [t for t in self.trajectories if not t.failed]


def save_jsonl(trajectories: Iterable[Trajectory], path: str | Path) -> Path:
    """Write trajectories to a JSONL file, one per line. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for trajectory in trajectories:
            f.write(trajectory.model_dump_json() + "\n")
    return path


def load_jsonl(path: str | Path) -> list[Trajectory]:
    """Read trajectories written by :func:`save_jsonl`.

    Raises:
        ValueError: A line is not a valid trajectory; the message names the
            file and line number.
    """
    path = Path(path)
    out: list[Trajectory] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(Trajectory.model_validate(json.loads(line)))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a valid trajectory: {e}") from e
    return out


def flatten(groups: Sequence[TrajectoryGroup]) -> list[Trajectory]:
    """All trajectories of the groups, in order."""
    return [t for g in groups for t in g.trajectories]
