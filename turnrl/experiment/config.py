"""Experiment files: what ``turnrl train`` and ``turnrl eval`` read.

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

* Objects are named by import path, ``package.module:Name``, or by file,
  ``path/to/file.py:Name``, with ``args`` passed as keywords (Hydra's
  ``_target_`` idea without Hydra): any class or function a user can import can
  be named, and nothing is registered at import time. A module or file beside
  the experiment file is found from any working directory: ``base_dir``
  records the file's directory (see :mod:`turnrl.imports`).
* How the environment, scenarios and rewards are built from their sections:
  :mod:`turnrl.experiment.build`.
* Precedence: the profile (``--profile``, else the file's ``profile``, else
  ``balanced``), then the file, then each ``--set a.b=value`` in order; a
  ``--set`` value is parsed as YAML, so ``--set optim.lr=3e-4`` is a float.
* A key repeated in the file, or given twice with ``--set``, is an error naming
  it (YAML and JSON parsers would keep the last one silently), and so is an
  ``algorithm.estimator`` path that does not give an estimator. A bad value is
  blamed on where it came from: the ``--set`` that gave it, or the file.
* ``warmstart.steps: 0`` turns the warm-start off, as ``warmstart: null`` does.
* A script spells the same experiment as ``ExperimentConfig.from_profile(name,
  environment={...}, ...)``; ``config.to_yaml(path)`` writes it as a file that
  loads back to an equal config, so either spelling gives the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from turnrl.imports import import_dirs
from turnrl.training.config import (
    PROFILES,
    ProfileName,
    TrainingConfig,
    deep_merge,
    describe_errors,
)
from turnrl.training.config_files import parse_yaml, read_config_file
from turnrl.training.config_sections import Section
from turnrl.training.estimators import check_estimator

__all__ = [
    "ExperimentConfig",
    "ObjectSpec",
    "RewardSpec",
    "ScenarioSpec",
    "WarmstartSpec",
    "load_experiment",
]


class ObjectSpec(Section):
    """An object named by import path, with keyword arguments."""

    target: str = Field(
        description="Import path 'package.module:Name', or 'path/to/file.py:Name' (a relative "
        "path is looked up beside the experiment file, then in the current directory)."
    )
    args: dict[str, Any] | None = Field(
        None, description="Keyword arguments (None: use the object as it is, if it can be)."
    )


class RewardSpec(ObjectSpec):
    """One reward component."""

    weight: float = Field(1.0, description="Weight in the total reward (0: logged only).")


class ScenarioSpec(Section):
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
    split_seed: int | None = Field(
        0,
        description="Seed of the held-out split (None: hold out the first eval_size, for a "
        "source that is shuffled already).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword options of load_scenarios for files (prompt_field, system, ...).",
    )


class WarmstartSpec(Section):
    """Supervised steps on demonstrations before RL."""

    demonstrations: str | ObjectSpec = Field(
        description="A JSONL file with a 'messages' list per line, or a factory called as "
        "target(train_scenarios, **args) returning conversations (lists of messages)."
    )
    steps: int = Field(
        100, ge=1, description="Optimizer steps (0 turns the warm-start off, as warmstart: null)."
    )
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    batch_size: int = Field(32, ge=1, description="Conversations per step.")
    train_on: Literal["all", "last"] = Field(
        "all", description="Train on all assistant turns or only the last of each."
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip each step's gradient to this norm (null: no clipping)."
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
    warmstart: WarmstartSpec | None = Field(
        None, description="Optional supervised warm-start (null, or steps: 0: none)."
    )
    base_dir: str | None = Field(
        None,
        description="Where targets off the Python path and relative 'file.py:Name' targets are "
        "looked up (then in the current directory); load_experiment sets it to the experiment "
        "file's directory, and the run records it, so `turnrl eval` finds them from anywhere.",
    )

    @model_validator(mode="before")
    @classmethod
    def _zero_warmstart_steps_mean_none(cls, data: Any) -> Any:
        # `--set warmstart.steps=0` is how a user turns a file's warm-start off.
        if isinstance(data, dict) and isinstance(data.get("warmstart"), dict):
            steps = data["warmstart"].get("steps")
            if steps == 0 and not isinstance(steps, bool):
                data = {**data, "warmstart": None}
        return data

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        """Read an experiment file: :func:`load_experiment` without overrides."""
        return load_experiment(path)

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
    merged_data = data
    for item in overrides:
        key, patch = _parse_override(item)
        if key in given:
            raise ValueError(
                f"--set {key} is given twice ({given[key]!r} and {item!r}); give it once"
            )
        given[key] = item
        merged_data = deep_merge(merged_data, patch)
    name = profile or merged_data.get("profile") or "balanced"
    if name not in PROFILES:
        raise ValueError(f"{source}: unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    merged = deep_merge(deep_merge({}, PROFILES[name]), {**merged_data, "profile": name})
    if path is not None:
        # A relative base_dir (or none) is the experiment file's own directory.
        merged["base_dir"] = str((path.parent / (merged.get("base_dir") or ".")).resolve())
    try:
        config = ExperimentConfig.model_validate(merged)
    except ValidationError as e:
        raise ValueError(_invalid(e, source, data, given)) from None
    with import_dirs(config.base_dir):
        check_estimator(config.algorithm, source=source)
    return config


def _invalid(
    error: ValidationError, source: str, file_data: dict[str, Any], given: dict[str, str]
) -> str:
    """The message of a validation error, each bad value blamed on its ``--set`` or the file."""
    from_set = [_override_of(item["loc"], file_data, given) for item in error.errors()]
    lines = describe_errors(error).splitlines()
    if len(lines) != len(from_set):  # a message of several lines: blame as a whole
        culprit = next((x for x in from_set if x is not None), None)
        from_set = [culprit] * len(lines)
    if all(from_set):
        header = "invalid --set " + ", ".join(dict.fromkeys(str(x) for x in from_set))
        return f"{header}:\n" + "\n".join(lines)
    marked = [
        line + (f" (from --set {x})" if x else "") for line, x in zip(lines, from_set, strict=True)
    ]
    return f"invalid {source}:\n" + "\n".join(marked)


def _override_of(
    loc: tuple[int | str, ...], file_data: dict[str, Any], given: dict[str, str]
) -> str | None:
    """The ``--set`` item that gave the value at ``loc``, or None when it came from the file.

    A ``--set`` owns what lies under its key (``--set warmstart={...}``), the field
    it names and, when the file lacks the section, the section it brought in.
    """
    where = [str(part) for part in loc]
    if not where:  # the experiment as a whole
        return None
    for key, item in given.items():
        parts = key.split(".")
        if where[: len(parts)] == parts or parts[: len(where)] == where:
            return item
        if parts[0] == where[0] and parts[0] not in file_data:
            return item
    return None


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
