"""The custom game of the profile benchmark: examples/custom_environment.py's GuessTheNumber.

The game is the user's own (the example, unchanged); what this module adds is
what a user would write to train it: the scenarios (one per secret) and a
warm-start teacher. The teacher plays a sloppy binary search: each guess is
the middle of the range the hints still allow with probability
``1 - sloppiness``, else any number in that range. It always finds the
secret within the game's five guesses on 1..20 when it bisects, and sometimes
runs out when it does not, so a policy that imitates it has room to improve
by bisecting every time (the game pays 1.0 on the first guess, 0.2 less per
later one).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from turnrl.types import Message, Scenario, assistant, user

OPENING = "I picked a number from 1 to 20. Guess it!"  # GuessTheNumber.reset's text
LOW, HIGH, GUESSES = 1, 20, 5


def make_scenarios() -> list[Scenario]:
    """One scenario per secret, 1..20."""
    return [Scenario(id=f"secret-{n}", data={"secret": n}) for n in range(LOW, HIGH + 1)]


def play(secret: int, rng: random.Random, sloppiness: float) -> list[Message]:
    """One game of the teacher against ``secret``, as the environment would answer."""
    low, high = LOW, HIGH
    conversation = [user(OPENING)]
    for _ in range(GUESSES):
        guess = (low + high) // 2 if rng.random() >= sloppiness else rng.randint(low, high)
        conversation.append(assistant(str(guess)))
        if guess == secret:
            break
        if guess < secret:
            low = guess + 1
            conversation.append(user("Higher."))
        else:
            high = guess - 1
            conversation.append(user("Lower."))
    if conversation[-1].role == "user":  # out of guesses: the game says nothing more
        conversation.pop()
    return conversation


def demonstrations(
    scenarios: Sequence[Scenario], *, per_secret: int = 40, sloppiness: float = 0.5, seed: int = 0
) -> list[list[Message]]:
    """``per_secret`` games of the teacher against each training secret."""
    if not 0 <= sloppiness <= 1:
        raise ValueError(f"sloppiness must be in [0, 1], got {sloppiness}")
    rng = random.Random(seed)
    return [play(s.data["secret"], rng, sloppiness) for s in scenarios for _ in range(per_secret)]
