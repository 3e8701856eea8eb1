"""Arithmetic: the built-in task, small enough for the embedded character-level model.

The agent is asked ``What is 3+4?`` and answers; a wrong answer earns
``Wrong. Try again.`` until ``max_attempts`` are used. Rewards decay with the
attempt that succeeds (``attempt_rewards``, default 1.0, 0.5, 0.25), so the
return of an episode, the sum of its per-turn rewards, is 1.0 for a first-try
answer, 0.5 for a second try, 0.25 for a third and 0 for never. That gives a
multi-turn task whose credit assignment is easy to check by hand.

Choices, and why:

* Questions are short and unspaced (``What is 3+4?``) because the embedded
  model is character-level with a small context.
* The answer is the first integer in the reply (:func:`parse_answer`), so
  ``7.`` or ``7 apples`` count; stricter formats belong in a reward function.
* Running out of attempts *terminates* the episode: it is the task's own end,
  not a limit, so there is nothing to bootstrap.
* ``reset`` plays ``scenario.prompt`` when it has one (as built by
  :func:`make_scenarios`), so a user can add a system prompt; otherwise it
  asks :func:`question_text` from ``scenario.data``.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from turnrl.environments.base import Environment, StepResult, scenario_from_options
from turnrl.types import Message, Scenario, assistant, user

OPS = {"+": "add", "-": "sub", "*": "mul"}
RETRY_TEXT = "Wrong. Try again."

_INTEGER = re.compile(r"-?[0-9]+")


def question_text(a: int, op: str, b: int) -> str:
    """The question for ``a op b``.

    >>> question_text(3, "+", 4)
    'What is 3+4?'
    """
    return f"What is {a}{op}{b}?"


def parse_answer(text: str) -> int | None:
    """The first integer in ``text`` (with an optional leading ``-``), or ``None``.

    >>> parse_answer("  -12 apples"), parse_answer("7."), parse_answer("no")
    (-12, 7, None)
    """
    match = _INTEGER.search(text)
    return int(match.group()) if match else None


def _compute(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown op {op!r}; expected one of {sorted(OPS)}")


def _opening(scenario: Scenario) -> list[Message]:
    if scenario.prompt:
        return list(scenario.prompt)
    try:
        a, op, b = scenario.data["a"], scenario.data["op"], scenario.data["b"]
    except KeyError as e:
        raise ValueError(
            f"arithmetic scenario {scenario.id!r} has no prompt and no data[{e.args[0]!r}]"
        ) from None
    return [user(question_text(a, op, b))]


def _answer(scenario: Scenario) -> int:
    data = scenario.data
    if "answer" in data:
        return int(data["answer"])
    try:
        return _compute(data["a"], data["op"], data["b"])
    except KeyError as e:
        raise ValueError(
            f"arithmetic scenario {scenario.id!r} needs data['answer'] or data "
            f"'a', 'op', 'b'; missing {e.args[0]!r}"
        ) from None


class ArithmeticEnvironment(Environment):
    """Answer ``a op b``, with up to ``max_attempts`` tries and decaying rewards.

    Args:
        scenarios: Scenarios from :func:`make_scenarios` (or with the same
            ``data``: ``a``, ``b``, ``op``, ``answer``).
        max_attempts: Answers allowed per episode (>= 1).
        attempt_rewards: Reward for a correct answer at attempt 1, 2, ...;
            needs at least ``max_attempts`` finite values.

    Raises:
        ValueError: ``max_attempts`` < 1, or too few / non-finite rewards.
    """

    def __init__(
        self,
        scenarios: Sequence[Scenario] = (),
        *,
        max_attempts: int = 3,
        attempt_rewards: Sequence[float] = (1.0, 0.5, 0.25),
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if len(attempt_rewards) < max_attempts:
            raise ValueError(
                f"attempt_rewards has {len(attempt_rewards)} values but max_attempts="
                f"{max_attempts}: give one reward per attempt"
            )
        if not all(math.isfinite(r) for r in attempt_rewards):
            raise ValueError(f"attempt_rewards must be finite, got {attempt_rewards!r}")
        self.scenarios = tuple(scenarios)
        self.max_attempts = max_attempts
        self.attempt_rewards = tuple(float(r) for r in attempt_rewards)
        self._answer: int | None = None
        self._attempt = 0
        self._done = False

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        scenario = scenario_from_options(options)
        self._answer = _answer(scenario)
        self._attempt = 0
        self._done = False
        return _opening(scenario), {"scenario_id": scenario.id}

    async def step(self, message: Message) -> StepResult:
        if self._answer is None:
            raise RuntimeError("ArithmeticEnvironment.step() called before reset()")
        if self._done:
            raise RuntimeError("ArithmeticEnvironment.step() called after the episode ended")
        self._attempt += 1
        parsed = parse_answer(message.content)
        correct = parsed == self._answer
        info = {"correct": correct, "attempt": self._attempt, "answer": parsed}
        if correct:
            reward, observation, self._done = self.attempt_rewards[self._attempt - 1], [], True
        elif self._attempt < self.max_attempts:
            reward, observation = 0.0, [user(RETRY_TEXT)]
        else:
            reward, observation, self._done = 0.0, [], True
        return StepResult(observation, reward, self._done, False, info)


def make_scenarios(
    *,
    low: int = 0,
    high: int = 9,
    ops: Sequence[str] = ("+",),
    n: int | None = None,
    seed: int = 0,
    b_range: tuple[int, int] | None = None,
) -> list[Scenario]:
    """All ``a op b`` questions with ``a, b`` in ``[low, high]``, shuffled.

    For ``-`` only ``a >= b`` is included, so answers are never negative.

    Args:
        low: Smallest operand.
        high: Largest operand (inclusive).
        ops: Operators, from ``"+"``, ``"-"``, ``"*"``.
        n: Keep the first ``n`` after shuffling; ``None`` keeps all.
        seed: Seed of the shuffle (``random.Random(seed)``).
        b_range: ``(low, high)`` of the second operand when it differs from
            the first's (the demo uses ``a`` in 0..99 and ``b`` in 0..9).

    Returns:
        Scenarios with ids like ``add-3-4``, ``sub-7-2``, ``mul-3-4``.

    Raises:
        ValueError: ``low > high``, an unknown op, or ``n`` outside
            ``[0, number of questions]``.

    >>> [s.id for s in make_scenarios(low=1, high=2, seed=0)]
    ['add-2-1', 'add-1-1', 'add-1-2', 'add-2-2']
    """
    b_low, b_high = b_range if b_range is not None else (low, high)
    if low > high or b_low > b_high:
        raise ValueError(
            f"low must be <= high for both operands, got a in [{low}, {high}], "
            f"b in [{b_low}, {b_high}]"
        )
    ops = tuple(dict.fromkeys(ops))  # duplicates would duplicate ids
    if not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops must be a non-empty subset of {sorted(OPS)}, got {ops!r}")
    scenarios = [
        Scenario(
            id=f"{OPS[op]}-{a}-{b}",
            prompt=[user(question_text(a, op, b))],
            data={"a": a, "b": b, "op": op, "answer": _compute(a, op, b)},
        )
        for op in ops
        for a, b in itertools.product(range(low, high + 1), range(b_low, b_high + 1))
        if op != "-" or a >= b
    ]
    random.Random(seed).shuffle(scenarios)
    if n is None:
        return scenarios
    if not 0 <= n <= len(scenarios):
        raise ValueError(f"n must be in [0, {len(scenarios)}] for these ranges and ops, got {n}")
    return scenarios[:n]


def split_scenarios(
    scenarios: Sequence[Scenario], eval_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Scenario], list[Scenario]]:
    """Split scenarios into disjoint train and eval lists, deterministically.

    The eval list has ``round(len * eval_fraction)`` scenarios (at least one,
    and leaving at least one for training), chosen with ``random.Random(seed)``.
    Both lists keep the input order.

    Args:
        scenarios: Scenarios with distinct ids.
        eval_fraction: Fraction held out for evaluation, in (0, 1).
        seed: Seed of the choice.

    Returns:
        ``(train, eval)``.

    Raises:
        ValueError: ``eval_fraction`` outside (0, 1), fewer than 2 scenarios,
            or duplicate ids (a duplicate could land on both sides).
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    if len(scenarios) < 2:
        raise ValueError(f"need at least 2 scenarios to split, got {len(scenarios)}")
    dupes = sorted(i for i, count in Counter(s.id for s in scenarios).items() if count > 1)
    if dupes:
        raise ValueError(f"scenario ids must be distinct to split, duplicated: {dupes[:5]}")
    n_eval = min(max(round(len(scenarios) * eval_fraction), 1), len(scenarios) - 1)
    eval_idx = set(random.Random(seed).sample(range(len(scenarios)), n_eval))
    train = [s for i, s in enumerate(scenarios) if i not in eval_idx]
    held_out = [s for i, s in enumerate(scenarios) if i in eval_idx]
    return train, held_out


def demonstration(scenario: Scenario, *, wrong: Sequence[int] = ()) -> list[Message]:
    """A conversation ending in the correct answer, for a supervised warm start.

    Args:
        scenario: The question.
        wrong: Wrong answers given first, each followed by the retry message,
            so the model also sees what a retry looks like. Train on the last
            turn only (``supervised_warmstart(..., train_on="last")``) to
            avoid teaching the wrong answers.

    >>> scenario = next(s for s in make_scenarios() if s.id == "add-3-4")
    >>> [(m.role, m.content) for m in demonstration(scenario)]
    [('user', 'What is 3+4?'), ('assistant', '7')]
    >>> [m.content for m in demonstration(scenario, wrong=[8])]
    ['What is 3+4?', '8', 'Wrong. Try again.', '7']
    """
    answer = _answer(scenario)
    if answer in wrong:
        raise ValueError(f"wrong answers {list(wrong)} include the correct answer {answer}")
    retries = [m for w in wrong for m in (assistant(str(w)), user(RETRY_TEXT))]
    return [*_opening(scenario), *retries, assistant(str(answer))]


def demonstrations(
    scenarios: Sequence[Scenario],
    *,
    retry_fraction: float = 0.5,
    label_noise: float = 0.0,
    mistake: Literal["near", "plus_ten"] = "near",
    seed: int = 0,
) -> list[list[Message]]:
    """Warm-start conversations: first-try answers, and some retries.

    A model that has only seen first answers has never seen ``Wrong. Try
    again.``, and answers it with noise. Here ``retry_fraction`` of the
    conversations first give one or two wrong answers within 3 of the right
    one, each followed by the retry message (see :func:`demonstration`).

    ``mistake`` picks the wrong attempts: ``"near"``, random answers within 3
    of the right one (train on the last turn only, ``train_on="last"``, to
    teach retries without the mistakes); ``"plus_ten"``, a sloppy teacher's
    systematic miss, ``a+b+10`` then ``a+b+20``. Imitated in full
    (``train_on="all"``), the latter gives a model that knows the sums but
    habitually needs a retry, which the environment's reward (1.0 for a right
    first answer, 0.5 for a second) teaches it to drop: the demo's setup.

    ``label_noise`` makes the demonstrations imperfect in another way: that
    fraction of conversations ends in a wrong answer within 3 of the right one
    instead of the right answer.

    >>> convs = demonstrations(make_scenarios(n=10), retry_fraction=1.0)
    >>> all(c[2].content == RETRY_TEXT for c in convs)
    True
    """
    if not 0 <= retry_fraction <= 1:
        raise ValueError(f"retry_fraction must be in [0, 1], got {retry_fraction}")
    if not 0 <= label_noise <= 1:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if mistake not in ("near", "plus_ten"):
        raise ValueError(f"mistake must be 'near' or 'plus_ten', got {mistake!r}")
    rng = random.Random(seed)
    noise_rng = random.Random(f"label-noise-{seed}")  # leaves rng's draws as without noise
    out = []
    for scenario in scenarios:
        answer = _answer(scenario)
        retries = 0 if rng.random() >= retry_fraction else rng.choice([1, 2])
        near = [w for w in range(max(0, answer - 3), answer + 4) if w != answer]
        wrong = rng.sample(near, retries)
        if mistake == "plus_ten":
            wrong = [answer + 10 * (k + 1) for k in range(retries)]
        conversation = demonstration(scenario, wrong=wrong)
        if label_noise and noise_rng.random() < label_noise:
            mistake = noise_rng.choice([w for w in near if w not in wrong])
            conversation[-1] = assistant(str(mistake))
        out.append(conversation)
    return out
