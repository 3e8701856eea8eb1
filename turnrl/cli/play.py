"""``turnrl chat --env``: play one episode of an experiment's environment in the terminal.

The episode is played as training plays it: by
:func:`~turnrl.training.rollout.run_episode`, on the environment under the
run's limits (:func:`~turnrl.training.rollout.with_limits`), with the sampling
settings of the run's rollouts, then scored by the experiment's reward
functions with :func:`~turnrl.rewards.score_groups`. Two pieces make it
visible and playable:

- :class:`Transcript`, a wrapper that prints each observation, reply, reward,
  ``terminated``/``truncated`` and info as the episode goes;
- :class:`HumanAgent`, an agent whose replies are typed at the prompt
  (``--human``), to check an environment by hand.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from turnrl.agents.base import Agent
from turnrl.agents.inference import SamplingParams
from turnrl.environments.base import Environment, StepResult, checked_reset, checked_step
from turnrl.environments.wrappers import Wrapper
from turnrl.rewards import RewardFunction, score_groups
from turnrl.rewards.combine import as_reward
from turnrl.training.config import RolloutConfig
from turnrl.training.rollout import run_episode, with_limits
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, Turn, assistant

__all__ = [
    "HumanAgent",
    "LeftEpisode",
    "Transcript",
    "interrupt_at_prompt",
    "pick_scenario",
    "play_episode",
]

# An info value longer than this is cut in the transcript (a tool's output, a long list).
SHOWN_VALUE_CHARS = 60


class LeftEpisode(BaseException):
    """The player left at the prompt (end of input or ``/quit``).

    A ``BaseException``, like ``KeyboardInterrupt``: ``run_episode`` keeps any
    ``Exception`` as a failed episode, and leaving is not a failure.
    """


class HumanAgent:
    """An agent whose replies a person types, one line per turn.

    ``/quit`` or the end of input raise :class:`LeftEpisode`. An empty line is
    a reply like any other (environments must cope with empty messages).

    Args:
        prompt: Shown before each reply ("" when the input is not a terminal).
    """

    def __init__(self, prompt: str = "you> ") -> None:
        self.prompt = prompt

    async def respond(
        self, conversation: Sequence[Message], *, tools: Sequence[dict[str, Any]] | None = None
    ) -> Turn:
        """The next line typed, as the assistant's turn (no tokens: nothing was sampled)."""
        # input() blocks the event loop on purpose: nothing else runs in a one-episode
        # session, and a worker thread waiting in input() would outlive a Ctrl-C.
        try:
            line = input(self.prompt)
        except EOFError:
            raise LeftEpisode from None
        if line.strip() == "/quit":
            raise LeftEpisode
        return Turn(message=assistant(line), prompt_ids=[], completion_ids=[])


class Transcript(Wrapper):
    """Prints the episode as it goes: observations, replies, rewards, flags and info.

    Args:
        env: The environment to show.
        show_replies: Print the assistant's messages (off when a person typed
            them at a terminal, where they are on screen already).
    """

    def __init__(self, env: Environment, *, show_replies: bool = True) -> None:
        super().__init__(env)
        self.show_replies = show_replies

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        # Checked here rather than by the rollout, so a broken result is reported, not printed.
        observation, info = await checked_reset(self.env, seed=seed, options=options)
        _print_messages(observation)
        if info:
            print(f"  info: {summarize_info(info)}", flush=True)
        return observation, info

    async def step(self, message: Message) -> StepResult:
        if self.show_replies:
            _print_messages([message])
        result = await checked_step(self.env, message)
        flags = f"terminated {result.terminated}, truncated {result.truncated}"
        line = f"  reward {result.reward:+.3f}, {flags}"
        print(line + (f"; info: {summarize_info(result.info)}" if result.info else ""), flush=True)
        _print_messages(result.observation)
        return result


def summarize_info(info: dict[str, Any]) -> str:
    """``key=value, ...`` with long values cut to :data:`SHOWN_VALUE_CHARS`."""
    parts = []
    for key, value in info.items():
        shown = repr(value)
        if len(shown) > SHOWN_VALUE_CHARS:
            shown = shown[: SHOWN_VALUE_CHARS - 3] + "..."
        parts.append(f"{key}={shown}")
    return ", ".join(parts)


def _print_messages(messages: Sequence[Message]) -> None:
    for m in messages:
        # Later lines are indented under the role, so a multi-line message reads as one.
        text = m.content.replace("\n", "\n" + " " * (len(m.role) + 2))
        print(f"{m.role}> {text}", flush=True)


def pick_scenario(
    choice: str | None, held_out: Sequence[Scenario], train: Sequence[Scenario]
) -> tuple[Scenario, str]:
    """The scenario ``--scenario`` names, and where it comes from ("held-out 3 of 100").

    Args:
        choice: A scenario id (held-out or training), or an index into the
            held-out scenarios (the training ones when none are held out);
            ``None`` for the first. An id wins over an index.
        held_out: The experiment's held-out scenarios.
        train: Its training scenarios.

    Raises:
        ValueError: No scenarios, no scenario with that id, or an index out of range.
    """
    pool, kind = (held_out, "held-out") if held_out else (train, "training")
    if not pool:
        raise ValueError(
            "the experiment has no scenarios to play: add a `scenarios` section, or give the "
            "environment a `scenarios` list"
        )
    if choice is not None:
        for name, scenarios in (("held-out", held_out), ("training", train)):
            for i, scenario in enumerate(scenarios):
                if scenario.id == choice:
                    return scenario, f"{name} {i} of {len(scenarios)}"
    if choice is None:
        index = 0
    elif choice.strip().isdigit():
        index = int(choice)
    else:
        examples = ", ".join(repr(s.id) for s in pool[:3])
        raise ValueError(
            f"--scenario {choice!r}: no scenario has this id (ids look like {examples}); "
            f"or give an index from 0 to {len(pool) - 1} into the {kind} scenarios"
        )
    if index >= len(pool):
        raise ValueError(
            f"--scenario {index}: out of range; the experiment has {len(pool)} {kind} "
            f"scenarios, so give an index from 0 to {len(pool) - 1} (or a scenario id)"
        )
    return pool[index], f"{kind} {index} of {len(pool)}"


@contextmanager
def interrupt_at_prompt() -> Iterator[None]:
    """Let Ctrl-C interrupt an ``input()`` that runs inside the event loop.

    asyncio's runner turns the first SIGINT into a cancellation of its main
    task, which a blocked ``input()`` never sees (it takes a second Ctrl-C);
    with a handler of our own the runner leaves SIGINT alone, and the
    ``KeyboardInterrupt`` is raised in ``input()`` at once.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def play_episode(
    agent: Agent,
    env: Environment,
    scenario: Scenario,
    rewards: dict[RewardFunction, float],
    rollout: RolloutConfig,
    *,
    seed: int = 0,
    sampling: SamplingParams | None = None,
    show_replies: bool = True,
) -> Trajectory:
    """Play ``scenario`` once, printing it as it goes, and score it as training would.

    Args:
        agent: The policy, or a :class:`HumanAgent`.
        env: The experiment's environment (the run's limits are added here).
        scenario: The scenario to play.
        rewards: ``{reward function: weight}`` (empty: environment rewards only).
        rollout: The run's rollout settings (``max_turns``, timeouts).
        seed: The episode's reset seed.
        sampling: Sampling settings (None: the agent's own).
        show_replies: Print the assistant's messages.

    Returns:
        The trajectory, scored (``reward``, ``reward_components``), or with
        ``error`` set if the environment or a reward function failed.

    Raises:
        LeftEpisode: A :class:`HumanAgent` player left.
    """
    shown = Transcript(with_limits(env, rollout), show_replies=show_replies)
    trajectory = await run_episode(agent, shown, scenario, seed=seed, sampling=sampling)
    group = TrajectoryGroup(scenario=scenario, trajectories=[trajectory])
    await score_groups([group], as_reward(rewards or None), timeout_s=rollout.reward_timeout_s)
    return trajectory
