"""Experiments described in a file: what ``turnrl train`` and ``turnrl eval`` run.

An experiment file is a training config (the sections of
:class:`~turnrl.training.config.TrainingConfig`) plus what a script would
otherwise build by hand: the environment, the scenarios, the reward functions
and an optional supervised warm-start::

    profile: balanced
    environment:
      target: turnrl.environments.tasks:ArithmeticEnvironment
      args: {max_attempts: 3}
    scenarios:
      train: examples/data/arithmetic_sample.jsonl
      eval_fraction: 0.2
    rewards:
      - target: turnrl.rewards:regex_format
        args: {pattern: '\\s*-?\\d+\\s*'}
        weight: 0.0
    optim: {lr: 2.0e-4}
    run: {max_steps: 50, output_dir: runs/arithmetic}

Choices, and why:

* Objects are named by import path, ``package.module:Name``, with ``args``
  passed as keywords (Hydra's ``_target_`` idea without Hydra): any class or
  function a user can import can be named, and nothing is registered at import
  time.
* The environment is built as ``target(scenarios=train, **args)`` when the file
  has a ``scenarios`` section, else as ``target(**args)`` and trained on its own
  ``scenarios``; every built-in environment takes ``scenarios`` that way.
* A scenario source is a local file (see :func:`turnrl.scenarios.load_scenarios`)
  or a factory ``{target, args}`` returning scenarios (for generated tasks).
* A reward entry is used as it is when it names a reward function object
  (``@reward_function``-decorated); it is called with ``args`` when ``args`` is
  given or it takes no required argument (the built-in factories); otherwise it
  is a plain ``(trajectory) -> float`` function.
* Precedence: the profile (``--profile``, else the file's ``profile``, else
  ``balanced``), then the file, then each ``--set a.b=value`` in order; a
  ``--set`` value is parsed as YAML, so ``--set optim.lr=3e-4`` is a float.
* A key repeated in the file, or given twice with ``--set``, is an error naming
  it (YAML and JSON parsers would keep the last one silently), and so is an
  ``algorithm.estimator`` path that does not give an estimator.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from turnrl.agents.engine import SamplingParams
from turnrl.agents.tiny import tiny_model_path
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.base import Environment
from turnrl.rewards.base import RewardFunction, as_reward_function
from turnrl.scenarios import load_scenarios, split_scenarios
from turnrl.training.config import (
    PROFILES,
    ProfileName,
    TrainingConfig,
    _deep_merge,
    _describe,
    _Section,
)
from turnrl.training.config_files import parse_yaml, read_config_file
from turnrl.training.estimators import check_estimator
from turnrl.types import Message, Scenario

__all__ = [
    "Experiment",
    "ExperimentConfig",
    "ObjectSpec",
    "build_experiment",
    "import_object",
    "load_experiment",
]


class ObjectSpec(_Section):
    """An object named by import path, with keyword arguments."""

    target: str = Field(description="Import path 'package.module:Name'.")
    args: dict[str, Any] | None = Field(
        None, description="Keyword arguments (None: use the object as it is, if it can be)."
    )


class RewardSpec(ObjectSpec):
    """One reward component."""

    weight: float = Field(1.0, description="Weight in the total reward (0: logged only).")


class ScenarioSpec(_Section):
    """Where the training and evaluation scenarios come from."""

    train: str | ObjectSpec = Field(
        description="A local file (JSONL, JSON, parquet, CSV, save_to_disk directory) or a "
        "factory {target, args} returning scenarios."
    )
    eval: str | ObjectSpec | None = Field(
        None, description="Held-out scenarios, the same forms as train; or use eval_fraction."
    )
    eval_fraction: float | None = Field(
        None, gt=0, lt=1, description="Hold out this fraction of train for evaluation."
    )
    eval_size: int | None = Field(
        None, ge=1, description="Hold out this many train scenarios for evaluation."
    )
    split_seed: int = Field(0, description="Seed of the held-out split.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword options of load_scenarios for files (prompt_field, system, ...).",
    )


class WarmstartSpec(_Section):
    """Supervised steps on demonstrations before RL."""

    demonstrations: str | ObjectSpec = Field(
        description="A JSONL file with a 'messages' list per line, or a factory called as "
        "target(train_scenarios, **args) returning conversations (lists of messages)."
    )
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    batch_size: int = Field(32, ge=1, description="Conversations per step.")
    train_on: Literal["all", "last"] = Field(
        "all", description="Train on all assistant turns or only the last of each."
    )


class ExperimentConfig(TrainingConfig):
    """A training config plus the parts ``turnrl train`` builds from it."""

    profile: ProfileName = Field("balanced", description="The profile the settings start from.")
    environment: ObjectSpec = Field(description="The environment class (or factory) and args.")
    scenarios: ScenarioSpec | None = Field(
        None, description="Scenario sources (None: the environment's own scenarios)."
    )
    rewards: list[RewardSpec] = Field(
        default_factory=list, description="Reward components (empty: environment rewards only)."
    )
    warmstart: WarmstartSpec | None = Field(None, description="Optional supervised warm-start.")

    def training_config(self) -> TrainingConfig:
        """The training settings alone."""
        fields = TrainingConfig.model_fields
        return TrainingConfig.model_validate(
            {k: v for k, v in self.model_dump().items() if k in fields}
        )


def load_experiment(
    path: str | Path | None = None,
    *,
    data: dict[str, Any] | None = None,
    profile: str | None = None,
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """Read an experiment file (YAML or JSON) and apply a profile and overrides.

    Args:
        path: The file; or None with ``data``.
        data: The already-parsed mapping (instead of ``path``).
        profile: Profile overriding the file's ``profile`` key.
        overrides: ``"a.b=value"`` strings, values parsed as YAML.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Not a mapping, a key repeated in the file or in
            ``overrides``, an unknown profile, a malformed override, settings
            that fail validation (each bad field named), or an
            ``algorithm.estimator`` that does not give an estimator.
    """
    source = str(path) if path is not None else "experiment"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"experiment file not found: {path}")
        data = read_config_file(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    given: dict[str, str] = {}
    for item in overrides:
        key, patch = _parse_override(item)
        if key in given:
            raise ValueError(
                f"--set {key} is given twice ({given[key]!r} and {item!r}); give it once"
            )
        given[key] = item
        data = _deep_merge(data, patch)
    name = profile or data.get("profile") or "balanced"
    if name not in PROFILES:
        raise ValueError(f"{source}: unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    merged = _deep_merge(_deep_merge({}, PROFILES[name]), {**data, "profile": name})
    try:
        config = ExperimentConfig.model_validate(merged)
    except ValidationError as e:
        raise ValueError(f"invalid {source}:\n{_describe(e)}") from None
    check_estimator(config.algorithm, source=source)
    return config


def _parse_override(item: str) -> tuple[str, dict[str, Any]]:
    """``"a.b=value"`` -> ``("a.b", {"a": {"b": value}})``, the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(
            f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=3e-4"
        )
    try:
        value = parse_yaml(raw, f"--set {item!r}") if raw.strip() else ""
    except ValueError as e:
        raise ValueError(f"{e} (the value is parsed as YAML)") from None
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "3e-4" as a string
    patch: Any = value
    for part in reversed(key.split(".")):
        patch = {part: patch}
    return key, patch


def _looks_like_float(text: str) -> bool:
    """A number YAML 1.1 left as a string ("3e-4"); not "inf" or "nan", which stay words."""
    try:
        number = float(text)
    except ValueError:
        return False
    return math.isfinite(number)


def import_object(path: str) -> Any:
    """The object at ``package.module:Name`` (``Name`` may be dotted).

    Raises:
        ValueError: The path is malformed, the module cannot be imported or
            has no such attribute.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{path!r}: expected an import path 'package.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{path!r}: cannot import module {module_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{path!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


class Experiment:
    """The parts an experiment file describes, built and ready to train.

    Attributes:
        config: The experiment config.
        agent: The policy.
        env: The environment (holding the training scenarios).
        rewards: ``{reward function: weight}`` (empty: environment rewards only).
        train_scenarios: Scenarios to train on.
        eval_scenarios: Held-out scenarios (may be empty).
        demonstrations: Warm-start conversations (empty without ``warmstart``).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        agent: TransformersAgent,
        env: Environment,
        rewards: dict[RewardFunction, float],
        train_scenarios: list[Scenario],
        eval_scenarios: list[Scenario],
        demonstrations: list[list[Message]],
    ) -> None:
        self.config = config
        self.agent = agent
        self.env = env
        self.rewards = rewards
        self.train_scenarios = train_scenarios
        self.eval_scenarios = eval_scenarios
        self.demonstrations = demonstrations

    def trainer(self, **kwargs: Any) -> Any:
        """A :class:`~turnrl.training.trainer.Trainer` over these parts."""
        from turnrl.training.trainer import Trainer

        return Trainer(
            self.agent,
            self.env,
            self.rewards or None,
            self.config,
            scenarios=self.train_scenarios,
            eval_scenarios=self.eval_scenarios,
            **kwargs,
        )

    def warmstart(self) -> list[float]:
        """Run the supervised warm-start, if configured; returns its losses."""
        spec = self.config.warmstart
        if spec is None:
            return []
        from turnrl.training.sft import supervised_warmstart

        return supervised_warmstart(
            self.agent,
            self.demonstrations,
            steps=spec.steps,
            lr=spec.lr,
            batch_size=spec.batch_size,
            seed=self.config.run.seed,
            train_on=spec.train_on,
        )


def build_experiment(
    config: ExperimentConfig, *, agent: TransformersAgent | None = None
) -> Experiment:
    """Load the model and build the environment, scenarios and rewards.

    Args:
        config: The experiment.
        agent: A policy to use instead of loading ``config.model.path``.

    Raises:
        ValueError: An import path that does not resolve, an object that is
            not what its section needs, or scenarios that cannot be loaded.
        FileNotFoundError: The model path or a data file does not exist.
    """
    train, held_out = _scenarios(config.scenarios)
    env_kwargs = dict(config.environment.args or {})
    if config.scenarios is not None:
        env_kwargs["scenarios"] = train
    try:
        env = _call(config.environment, "environment", **env_kwargs)
    except ValueError as e:
        if "scenarios" in str(e) and "scenarios" in env_kwargs:
            raise ValueError(
                f"{e} (with a `scenarios` section the environment is built with scenarios=[...]; "
                "remove the section to use the environment's own scenarios)"
            ) from None
        raise
    if not isinstance(env, Environment):
        raise ValueError(
            f"environment: {config.environment.target!r} built a {type(env).__name__}, "
            "not a turnrl Environment"
        )
    if config.scenarios is None:
        train = list(getattr(env, "scenarios", ()))
    rewards = {_reward(spec, i): spec.weight for i, spec in enumerate(config.rewards)}
    demos = _demonstrations(config.warmstart, train) if config.warmstart else []
    if agent is None:
        agent = load_agent(config)
    return Experiment(config, agent, env, rewards, train, held_out, demos)


def load_agent(config: TrainingConfig) -> TransformersAgent:
    """The policy named by ``config.model`` (the embedded tiny model when ``path`` is None)."""
    path = config.model.path if config.model.path is not None else tiny_model_path()
    return TransformersAgent.from_pretrained(
        path,
        dtype=config.model.dtype,
        sampling=SamplingParams(
            config.generation.max_new_tokens, config.generation.temperature, config.generation.top_p
        ),
    )


def _call(spec: ObjectSpec, section: str, *args: Any, **kwargs: Any) -> Any:
    obj = _import(spec, section)
    if not callable(obj):
        raise ValueError(f"{section}: {spec.target!r} is not callable")
    try:
        return obj(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{section}: {spec.target}(...) failed: {e}") from e


def _import(spec: ObjectSpec, section: str) -> Any:
    try:
        return import_object(spec.target)
    except ValueError as e:
        raise ValueError(f"{section}: {e}") from None


def _scenarios(spec: ScenarioSpec | None) -> tuple[list[Scenario], list[Scenario]]:
    if spec is None:
        return [], []
    train = _load_source(spec.train, spec.options, "scenarios.train")
    held_out = [] if spec.eval is None else _load_source(spec.eval, spec.options, "scenarios.eval")
    if spec.eval_fraction is not None or spec.eval_size is not None:
        if spec.eval is not None:
            raise ValueError("scenarios: give either eval or eval_fraction/eval_size, not both")
        train, held_out = split_scenarios(
            train, eval_fraction=spec.eval_fraction, eval_size=spec.eval_size, seed=spec.split_seed
        )
    if not train:
        raise ValueError("scenarios.train: no scenarios")
    return train, held_out


def _load_source(source: str | ObjectSpec, options: dict[str, Any], where: str) -> list[Scenario]:
    if isinstance(source, str):
        return load_scenarios(source, **options)
    loaded = _call(source, where, **(source.args or {}))
    try:
        return load_scenarios(loaded)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {source.target} did not return scenarios: {e}") from None


def _reward(spec: RewardSpec, index: int) -> RewardFunction:
    where = f"rewards[{index}]"
    obj = _import(spec, where)
    if isinstance(obj, RewardFunction) and not inspect.isfunction(obj):
        if spec.args:
            raise ValueError(f"{where}: {spec.target!r} is a reward function; it takes no args")
        return obj
    if not callable(obj):
        raise ValueError(f"{where}: {spec.target!r} is not callable")
    if spec.args is not None or not _required_params(obj):
        made = _call(spec, where, **(spec.args or {}))
        if not callable(made):
            kind = type(made).__name__
            raise ValueError(f"{where}: {spec.target}(...) returned a {kind}, not a function")
        return as_reward_function(made)
    return as_reward_function(obj)


def _required_params(fn: Any) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    return sum(
        p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in params
    )


def _demonstrations(spec: WarmstartSpec, train: list[Scenario]) -> list[list[Message]]:
    if isinstance(spec.demonstrations, ObjectSpec):
        made = _call(
            spec.demonstrations,
            "warmstart.demonstrations",
            train,
            **(spec.demonstrations.args or {}),
        )
        return [[Message.model_validate(m) for m in conv] for conv in made]
    path = Path(spec.demonstrations)
    if not path.is_file():
        raise FileNotFoundError(f"warmstart.demonstrations: no file {path}")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            out.append([Message.model_validate(m) for m in record["messages"]])
        except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as e:
            raise ValueError(
                f'{path}:{number}: expected {{"messages": [{{role, content}}, ...]}} ({e})'
            ) from None
    if not out:
        raise ValueError(f"{path}: no demonstrations")
    return out
