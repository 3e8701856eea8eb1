"""How an experiment's sections are built: environment, scenarios, rewards, demonstrations.

Every ``package.module:Name`` (or ``path/to/file.py:Name``) is resolved with
:func:`turnrl.imports.import_object`, the experiment's ``base_dir`` (its file's
directory) searched too. :func:`build_environment` and :func:`build_rewards`
need no model (``turnrl chat --env`` uses them). How each section is read:

* The environment is built as ``target(scenarios=train, **args)`` when the file
  has a ``scenarios`` section, else as ``target(**args)`` and trained on its own
  ``scenarios``; every built-in environment takes ``scenarios`` that way.
* A scenario source is a local file (see :func:`turnrl.scenarios.load_scenarios`)
  or a factory ``{target, args}`` returning scenarios (for generated tasks). A
  relative data path is looked up beside the experiment file, then in the
  current directory, as a relative ``file.py:Name`` target is.
* A reward entry is used as it is when it names a reward function object
  (``@reward_function``-decorated); it is called with ``args`` when ``args`` is
  given or it takes no required argument (the built-in factories); otherwise it
  is a plain ``(trajectory) -> float`` function.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from turnrl.environments.base import Environment
from turnrl.experiment.config import (
    ExperimentConfig,
    ObjectSpec,
    RewardSpec,
    ScenarioSpec,
    WarmstartSpec,
)
from turnrl.imports import import_dirs, import_object
from turnrl.rewards.base import RewardFunction, as_reward_function
from turnrl.scenarios import load_scenarios, split_scenarios
from turnrl.types import Message, Scenario

__all__ = ["build_demonstrations", "build_environment", "build_rewards", "build_scenarios"]


def build_environment(
    config: ExperimentConfig,
) -> tuple[Environment, list[Scenario], list[Scenario]]:
    """``(environment, train, held_out)``: the environment and the scenarios it plays.

    Raises:
        ValueError: An import path that does not resolve, an environment
            target that does not build a turnrl Environment, or scenarios that
            cannot be loaded.
        FileNotFoundError: A data file does not exist.
    """
    with import_dirs(config.base_dir):
        train, held_out = build_scenarios(config.scenarios, base_dir=config.base_dir)
        env = _environment(config, train)
    if config.scenarios is None:
        train = list(getattr(env, "scenarios", ()))
    return env, train, held_out


def _environment(config: ExperimentConfig, train: list[Scenario]) -> Environment:
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
    return env


def build_rewards(config: ExperimentConfig) -> dict[RewardFunction, float]:
    """``{reward function: weight}`` from the ``rewards`` section (empty without one).

    Raises:
        ValueError: An entry that does not resolve to a reward function.
    """
    with import_dirs(config.base_dir):
        return {_reward(spec, i): spec.weight for i, spec in enumerate(config.rewards)}


def _local_path(path: str | Path, base_dir: str | Path | None) -> Path:
    """``path``, or when relative the first of ``base_dir / path`` and ``./path`` that exists.

    A path found in neither stays as given, so that its loader names it in the error.
    """
    given = Path(path).expanduser()
    if given.is_absolute() or base_dir is None:
        return given
    beside = Path(base_dir) / given
    return beside if beside.exists() else given


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


def build_scenarios(
    spec: ScenarioSpec | None, *, base_dir: str | Path | None = None
) -> tuple[list[Scenario], list[Scenario]]:
    """``(train, held_out)`` from the ``scenarios`` section (both empty without one).

    A relative data path is looked up in ``base_dir`` (the experiment file's
    directory), then in the current directory.

    Raises:
        ValueError: A source cannot be loaded, both ``eval`` and a split are
            given, the split is impossible, or no training scenario is left.
    """
    if spec is None:
        return [], []
    train = _load_source(spec.train, spec.options, "scenarios.train", base_dir)
    held_out = []
    if spec.eval is not None:
        held_out = _load_source(spec.eval, spec.options, "scenarios.eval", base_dir)
    if spec.eval_fraction is not None or spec.eval_size is not None:
        if spec.eval is not None:
            raise ValueError("scenarios: give either eval or eval_fraction/eval_size, not both")
        if spec.split_seed is None:
            train, held_out = _split_first(train, spec.eval_fraction, spec.eval_size)
        else:
            train, held_out = split_scenarios(
                train,
                eval_fraction=spec.eval_fraction,
                eval_size=spec.eval_size,
                seed=spec.split_seed,
            )
    if not train:
        raise ValueError("scenarios.train: no scenarios")
    return train, held_out


def _split_first(
    scenarios: list[Scenario], eval_fraction: float | None, eval_size: int | None
) -> tuple[list[Scenario], list[Scenario]]:
    """``(train, held_out)`` holding out the first scenarios (``split_seed: null``)."""
    size = eval_size if eval_size is not None else round(len(scenarios) * (eval_fraction or 0))
    if not 1 <= size < len(scenarios):
        raise ValueError(
            f"scenarios: cannot hold out {size} of {len(scenarios)} scenarios; give an "
            "eval_size or eval_fraction that leaves at least one on each side"
        )
    return scenarios[size:], scenarios[:size]


def _load_source(
    source: str | ObjectSpec, options: dict[str, Any], where: str, base_dir: str | Path | None
) -> list[Scenario]:
    if isinstance(source, str):
        return load_scenarios(_local_path(source, base_dir), **options)
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


def build_demonstrations(
    spec: WarmstartSpec, train: list[Scenario], base_dir: str | None
) -> list[list[Message]]:
    """The warm-start's conversations: a factory called with ``train``, or a JSONL file.

    Raises:
        ValueError: A factory that fails, or a line that is not ``{"messages": [...]}``.
        FileNotFoundError: The file does not exist.
    """
    if isinstance(spec.demonstrations, ObjectSpec):
        made = _call(
            spec.demonstrations,
            "warmstart.demonstrations",
            train,
            **(spec.demonstrations.args or {}),
        )
        return [[Message.model_validate(m) for m in conv] for conv in made]
    path = _local_path(spec.demonstrations, base_dir)
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
