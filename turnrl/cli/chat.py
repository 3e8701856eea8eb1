"""``turnrl chat``: talk to a trained policy in the terminal."""

from __future__ import annotations

import argparse
import sys

import anyio
from transformers.utils import logging as hf_logging

from turnrl.agents.engine import SamplingParams
from turnrl.training.export import load_policy
from turnrl.types import Message


def command(args: argparse.Namespace) -> int:
    """``turnrl chat TARGET``: one line per message; /reset starts over, /quit leaves."""
    hf_logging.disable_progress_bar()
    agent = load_policy(args.target, sampling=SamplingParams(args.max_new_tokens, args.temperature))
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
