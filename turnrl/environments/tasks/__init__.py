"""Built-in tasks: small, checkable environments for demos, tests and benchmarks."""

from turnrl.environments.tasks.arithmetic import (
    ArithmeticEnvironment,
    demonstration,
    demonstrations,
    make_scenarios,
    parse_answer,
    question_text,
    split_scenarios,
)
from turnrl.environments.tasks.calculator import calculator_env
from turnrl.environments.tasks.quiz import QuizEnvironment, make_quiz_scenarios

__all__ = [
    "ArithmeticEnvironment",
    "QuizEnvironment",
    "calculator_env",
    "demonstration",
    "demonstrations",
    "make_quiz_scenarios",
    "make_scenarios",
    "parse_answer",
    "question_text",
    "split_scenarios",
]
