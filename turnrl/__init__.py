"""turnrl: reinforcement learning for multi-turn language-model agents.

The public API; see README.md for a tour and docs/design.md for the map.
"""

from turnrl.agents import ChatTemplateError, TemplateReport, check_chat_template
from turnrl.agents.base import Agent, TrainableAgent
from turnrl.agents.engine import GenerationEngine
from turnrl.agents.inference import InferenceEngine, SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments import (
    ConversationEnvironment,
    DropReasoning,
    EnvContractError,
    Environment,
    KeepLastTurns,
    StepResult,
    Summarize,
    Timeout,
    ToolEnvironment,
    TurnLimit,
    Wrapper,
    check_env,
)
from turnrl.experiment import Experiment, ExperimentConfig, load_experiment
from turnrl.rewards import RewardFunction, RewardResult, combine, reward_function
from turnrl.tools import Tool, tool
from turnrl.training.callbacks import Callback, EarlyStopping, KeepBest
from turnrl.training.config import TrainingConfig
from turnrl.training.sft import supervised_warmstart
from turnrl.training.trainer import Trainer
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, Turn

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Callback",
    "ChatTemplateError",
    "ConversationEnvironment",
    "DropReasoning",
    "EarlyStopping",
    "EnvContractError",
    "Environment",
    "Experiment",
    "ExperimentConfig",
    "GenerationEngine",
    "InferenceEngine",
    "KeepBest",
    "KeepLastTurns",
    "Message",
    "RewardFunction",
    "RewardResult",
    "SamplingParams",
    "Scenario",
    "StepResult",
    "Summarize",
    "TemplateReport",
    "Timeout",
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
    "Wrapper",
    "check_chat_template",
    "check_env",
    "combine",
    "load_experiment",
    "reward_function",
    "supervised_warmstart",
    "tool",
]
