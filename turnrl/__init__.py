"""turnrl: reinforcement learning for multi-turn language-model agents.

The public API; see README.md for a tour and docs/design.md for the map.
"""

from turnrl.agents.base import Agent, TrainableAgent
from turnrl.agents.engine import GenerationEngine
from turnrl.agents.inference import InferenceEngine, SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments import (
    ConversationEnvironment,
    Environment,
    StepResult,
    ToolEnvironment,
    TurnLimit,
    check_env,
)
from turnrl.rewards import RewardFunction, RewardResult, combine, reward_function
from turnrl.tools import Tool, tool
from turnrl.training.callbacks import Callback, EarlyStopping, KeepBest
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, Turn

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Callback",
    "ConversationEnvironment",
    "EarlyStopping",
    "Environment",
    "GenerationEngine",
    "InferenceEngine",
    "KeepBest",
    "Message",
    "RewardFunction",
    "RewardResult",
    "SamplingParams",
    "Scenario",
    "StepResult",
    "Tool",
    "ToolEnvironment",
    "TrainableAgent",
    "Trainer",
    "TrainingConfig",
    "Trajectory",
    "TrajectoryGroup",
    "TransformersAgent",
    "Turn",
    "TurnLimit",
    "check_env",
    "combine",
    "reward_function",
    "tool",
]
