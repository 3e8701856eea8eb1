"""Quiz: several questions in one episode, each turn judged on its own.

An episode asks ``What is a+b?`` for each question of its scenario in turn.
Each answer earns ``1 / len(questions)`` when right and 0 when wrong, paid on
that turn (a per-turn reward), and the environment says whether it was right
before asking the next question; the episode terminates after the last answer.
The return is the fraction answered right.

Why it is built in: it is the task where turn-level credit matters, with a
checkable answer. Every turn's quality is known on its own, yet a
trajectory-level estimator (GRPO, RLOO) gives every turn of an episode the
same advantage, from the episode's total: a wrong first answer in an episode
whose later answers were right is pushed up, and a right one in an episode
that went wrong later is pushed down. An estimator that credits each turn
with its own reward (a turn-level baseline, a per-turn value) does not make
that mistake, so on this task it should learn faster from the same samples.

The demonstrations (:func:`demonstrations`) come from a sloppy teacher who
answers each question right with probability ``accuracy`` and otherwise gives
``a+b+10``, the arithmetic demo's systematic miss, so a warm-started model
knows the sums and makes independent mistakes on each turn, which RL can
remove one turn at a time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from turnrl.environments.base import Environment, StepResult, scenario_from_options
from turnrl.environments.tasks.arithmetic import parse_answer, question_text
from turnrl.types import Message, Scenario, assistant, user

RIGHT_TEXT, WRONG_TEXT = "Right.", "Wrong."


def _questions(scenario: Scenario) -> list[dict[str, int]]:
    questions = scenario.data.get("questions")
    if not isinstance(questions, list) or not questions:
        raise ValueError(
            f"quiz scenario {scenario.id!r} needs data['questions'], a non-empty list of "
            "{'a': int, 'b': int} (make_quiz_scenarios builds them)"
        )
    for q in questions:
        if not isinstance(q, dict) or not {"a", "b"} <= q.keys():
            raise ValueError(f"quiz scenario {scenario.id!r}: question {q!r} needs 'a' and 'b'")
    return questions


def _ask(question: dict[str, int]) -> str:
    return question_text(question["a"], "+", question["b"])


class QuizEnvironment(Environment):
    """Answer each of a scenario's sums in turn; ``1 / len(questions)`` per right answer.

    Args:
        scenarios: From :func:`make_quiz_scenarios` (or with the same ``data``).

    The observation after an answer is one user message, ``Right. What is
    c+d?`` or ``Wrong. What is c+d?``; after the last answer there is none and
    the episode is terminated. ``info`` holds ``correct`` (this answer),
    ``question`` (its index) and ``right`` (right answers so far).
    """

    def __init__(self, scenarios: Sequence[Scenario] = ()) -> None:
        self.scenarios = tuple(scenarios)
        self._questions: list[dict[str, int]] = []
        self._index = 0
        self._right = 0

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        scenario = scenario_from_options(options)
        self._questions, self._index, self._right = _questions(scenario), 0, 0
        return [user(_ask(self._questions[0]))], {"scenario_id": scenario.id}

    async def step(self, message: Message) -> StepResult:
        if not self._questions:
            raise RuntimeError("QuizEnvironment.step() called before reset()")
        if self._index >= len(self._questions):
            raise RuntimeError("QuizEnvironment.step() called after the episode ended")
        question = self._questions[self._index]
        correct = parse_answer(message.content) == question["a"] + question["b"]
        self._right += correct
        info = {"correct": correct, "question": self._index, "right": self._right}
        self._index += 1
        reward = 1.0 / len(self._questions) if correct else 0.0
        if self._index == len(self._questions):
            return StepResult([], reward, True, False, info)
        verdict = RIGHT_TEXT if correct else WRONG_TEXT
        return StepResult(
            [user(f"{verdict} {_ask(self._questions[self._index])}")], reward, False, False, info
        )


def make_quiz_scenarios(
    n: int,
    *,
    questions: int = 3,
    low: int = 0,
    high: int = 99,
    b_range: tuple[int, int] = (0, 9),
    seed: int = 0,
) -> list[Scenario]:
    """``n`` quizzes of ``questions`` sums ``a+b`` (``a`` in ``[low, high]``, ``b`` in ``b_range``).

    Raises:
        ValueError: ``n`` or ``questions`` below 1, or an empty range.

    >>> [q["a"] + q["b"] for q in make_quiz_scenarios(1, questions=2)[0].data["questions"]]
    [55, 9]
    """
    if n < 1 or questions < 1:
        raise ValueError(f"n and questions must be >= 1, got n={n}, questions={questions}")
    if low > high or b_range[0] > b_range[1]:
        raise ValueError(f"empty range: a in [{low}, {high}], b in {list(b_range)}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sums = [{"a": rng.randint(low, high), "b": rng.randint(*b_range)} for _ in range(questions)]
        out.append(Scenario(id=f"quiz-{i}", data={"questions": sums}))
    return out


def demonstrations(
    scenarios: Sequence[Scenario], *, accuracy: float = 0.5, seed: int = 0
) -> list[list[Message]]:
    """A sloppy teacher: each answer right with probability ``accuracy``, else ``a+b+10``.

    >>> convs = demonstrations(make_quiz_scenarios(1, questions=2), accuracy=1.0)
    >>> [m.content for m in convs[0]]
    ['What is 49+6?', '55', 'Right. What is 5+4?', '9']
    """
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    rng = random.Random(seed)
    out = []
    for scenario in scenarios:
        questions = _questions(scenario)
        conversation = [user(_ask(questions[0]))]
        for k, q in enumerate(questions):
            right = rng.random() < accuracy
            conversation.append(assistant(str(q["a"] + q["b"] + (0 if right else 10))))
            if k + 1 < len(questions):
                verdict = RIGHT_TEXT if right else WRONG_TEXT
                conversation.append(user(f"{verdict} {_ask(questions[k + 1])}"))
        out.append(conversation)
    return out
