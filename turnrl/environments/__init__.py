"""Environments: who answers the agent (the world side).

``Environment`` is the async, Gymnasium-shaped contract; wrappers add limits;
``ConversationEnvironment`` plays scenarios against a simulated user;
``ToolEnvironment`` runs tool calls until a final answer; context policies
(``KeepLastTurns``, ``DropReasoning``, ``Summarize``) decide what the agent sees;
``check_env`` verifies any environment against the contract. Built-in tasks
live in ``turnrl.environments.tasks``.
"""

from turnrl.environments.base import Environment, StepResult, scenario_from_options
from turnrl.environments.checker import EnvCheckReport, EnvContractError, check_env
from turnrl.environments.context import DropReasoning, KeepLastTurns, Summarize
from turnrl.environments.conversation import (
    AgentUser,
    CallableUser,
    ConversationEnvironment,
    ScriptedUser,
    SimulatedUser,
    freeze,
    frozen_copy,
    is_frozen,
)
from turnrl.environments.tool_env import ToolEnvironment, exact_answer
from turnrl.environments.wrappers import EnvTimeoutError, Timeout, TurnLimit, Wrapper

__all__ = [
    "AgentUser",
    "CallableUser",
    "ConversationEnvironment",
    "DropReasoning",
    "EnvCheckReport",
    "EnvContractError",
    "EnvTimeoutError",
    "Environment",
    "KeepLastTurns",
    "ScriptedUser",
    "SimulatedUser",
    "StepResult",
    "Summarize",
    "Timeout",
    "ToolEnvironment",
    "TurnLimit",
    "Wrapper",
    "check_env",
    "exact_answer",
    "freeze",
    "frozen_copy",
    "is_frozen",
    "scenario_from_options",
]
