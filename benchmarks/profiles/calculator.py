"""The calculator task of the profile benchmark, as an experiment file can name it.

benchmarks/tool_task.py's setup (the compact call format, 75% of the
demonstrations call the tool) wrapped as factories: an experiment file gives
constructor arguments as YAML, which cannot spell a parser object.
"""

from __future__ import annotations

from collections.abc import Sequence

from turnrl.environments.tasks.calculator import calculator_env, demonstrations, make_scenarios
from turnrl.environments.tool_env import ToolEnvironment
from turnrl.tools.calls import CompactParser
from turnrl.types import Message, Scenario


def environment(scenarios: Sequence[Scenario]) -> ToolEnvironment:
    """The calculator environment with the compact call format."""
    return calculator_env(list(scenarios), parser=CompactParser())


def scenarios(n: int = 600, seed: int = 0) -> list[Scenario]:
    """``n`` multiplication questions (the experiment holds some out)."""
    return make_scenarios(n, seed=seed)


def demos(
    scenarios: Sequence[Scenario], *, count: int = 400, tool_fraction: float = 0.75, seed: int = 0
) -> list[list[Message]]:
    """Warm-start conversations on the first ``count`` training questions."""
    env = environment(scenarios)
    return demonstrations(env, list(scenarios)[:count], tool_fraction=tool_fraction, seed=seed)
