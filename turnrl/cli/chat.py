"""``turnrl chat``: talk to a trained policy, or play an episode of an environment with it.

- ``turnrl chat TARGET``: a free conversation with the policy;
- ``turnrl chat TARGET --env EXPERIMENT``: the policy plays one episode of the
  experiment's environment, printed turn by turn (:mod:`turnrl.cli.play`);
- ``turnrl chat --env EXPERIMENT --human``: you type the policy's side.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from dataclasses import replace

import anyio
from transformers.utils import logging as hf_logging

from turnrl.agents.engine import SamplingParams
from turnrl.cli.play import HumanAgent, LeftEpisode, interrupt_at_prompt, pick_scenario
from turnrl.cli.play import play_episode as play
from turnrl.experiment.build import build_environment, build_rewards
from turnrl.experiment.config import load_experiment
from turnrl.logging import configure_logging
from turnrl.training.distributed import seed_everything
from turnrl.training.export import load_policy
from turnrl.training.rollout import configure_engine, offered_tools
from turnrl.types import Message, Trajectory

# Reply settings of a free chat (an episode uses the experiment's `generation`).
CHAT_MAX_NEW_TOKENS, CHAT_TEMPERATURE = 64, 1.0


def command(args: argparse.Namespace) -> int:
    """``turnrl chat``: a free chat, or one episode with ``--env``."""
    hf_logging.disable_progress_bar()
    _check_arguments(args)
    if args.env is not None:
        return play_command(args)
    sampling = SamplingParams(
        args.max_new_tokens or CHAT_MAX_NEW_TOKENS,
        CHAT_TEMPERATURE if args.temperature is None else args.temperature,
    )
    agent = load_policy(args.target, sampling=sampling)
    start = [Message(role="system", content=args.system)] if args.system else []
    conversation = list(start)
    interactive = sys.stdin.isatty()
    if interactive:
        print("turnrl chat: type a message; /reset starts over, /quit (or Ctrl-D) leaves.")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if line.strip() == "/quit":
            break
        if line.strip() == "/reset":
            conversation = list(start)
            continue
        conversation.append(Message(role="user", content=line))
        turn = anyio.run(agent.respond, conversation)
        conversation.append(turn.message)
        print(f"assistant> {turn.message.content}", flush=True)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse combinations of options that would be ignored or cannot work."""
    if args.env is None:
        given = [name for name, value in _episode_options(args) if value]
        if given:
            raise ValueError(f"{', '.join(given)} go with --env EXPERIMENT (play an episode)")
        if args.target is None:
            raise ValueError("give the policy to chat with: a run directory, checkpoint or model")
        return
    if args.system is not None:
        raise ValueError("--system is for a free chat; in an episode the scenario opens it")
    if args.human and args.target is not None:
        raise ValueError(
            f"--human plays the policy's side yourself, with no model: drop {args.target}"
        )
    if args.human and (args.max_new_tokens is not None or args.temperature is not None):
        raise ValueError(
            "--max-new-tokens and --temperature set the policy's sampling: not --human"
        )
    if not args.human and args.target is None:
        raise ValueError(
            "give the policy to play the episode (a run directory, checkpoint or model), "
            "or --human to type its replies yourself"
        )


def _episode_options(args: argparse.Namespace) -> list[tuple[str, object]]:
    return [
        ("--human", args.human),
        ("--scenario", args.scenario),
        ("--set", args.set),
        ("--seed", args.seed is not None),
    ]


def play_command(args: argparse.Namespace) -> int:
    """``turnrl chat --env``: one episode, printed as it goes, and its return."""
    configure_logging("ERROR")  # failures are reported below, once
    config = load_experiment(args.env, overrides=args.set or ())
    env, train, held_out = build_environment(config)
    scenario, where = pick_scenario(args.scenario, held_out, train)
    rewards = build_rewards(config)
    seed = 0 if args.seed is None else args.seed
    seed_everything(seed)
    interactive = sys.stdin.isatty()
    print(f"scenario {scenario.id} ({where}), seed {seed}", flush=True)
    tools = offered_tools(env)
    if tools:
        print("tools: " + ", ".join(t.get("function", t).get("name", "?") for t in tools))
    if args.human:
        agent, sampling = HumanAgent("you> " if interactive else ""), None
        if interactive:
            print("you play the assistant: type each reply; /quit or Ctrl-D leaves.")
    else:
        agent = load_policy(args.target)
        sampling = configure_engine(agent.engine, config.generation)
        if args.max_new_tokens is not None:
            sampling = replace(sampling, max_new_tokens=args.max_new_tokens)
        if args.temperature is not None:
            sampling = replace(sampling, temperature=args.temperature)
        print(f"policy {args.target} ({_described(sampling)})", flush=True)
    try:
        with interrupt_at_prompt() if args.human else nullcontext():
            trajectory = anyio.run(
                lambda: play(
                    agent,
                    env,
                    scenario,
                    rewards,
                    config.rollout,
                    seed=seed,
                    sampling=sampling,
                    show_replies=not (args.human and interactive),
                )
            )
    except LeftEpisode:
        print("\nleft the episode before it ended", flush=True)
        return 0
    if trajectory.failed:
        print(f"turnrl chat: error: the episode failed: {trajectory.error}", file=sys.stderr)
        return 2
    weights = {fn.name: weight for fn, weight in rewards.items()}
    print(_outcome(trajectory, weights), flush=True)
    return 0


def _described(sampling: SamplingParams) -> str:
    return (
        f"max_new_tokens {sampling.max_new_tokens}, temperature {sampling.temperature:g}, "
        f"top_p {sampling.top_p:g}"
    )


def _outcome(trajectory: Trajectory, weights: dict[str, float]) -> str:
    """How the episode ended, its environment return and its reward with components.

    Args:
        trajectory: The scored episode.
        weights: Each reward function's weight, by name (shown after its raw score).
    """
    # run_episode ends an episode only on one of the two flags.
    ended = "terminated" if trajectory.terminated else "truncated"
    if trajectory.info.get("truncated_by") == "context_length":
        ended += " (the conversation outgrew the model's context)"
    turns = len(trajectory.turns)
    components = ", ".join(
        f"{name} {value:.3f}" + (f" x{weights[name]:g}" if name in weights else "")
        for name, value in trajectory.reward_components.items()
    )
    reward = trajectory.reward if trajectory.reward is not None else trajectory.env_return
    return (
        f"episode {ended} after {turns} turn{'s' if turns != 1 else ''}: "
        f"return {trajectory.env_return:.3f}, reward {reward:.3f} ({components})"
    )
