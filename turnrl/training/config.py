"""Training configuration: pydantic models, profiles, JSON/YAML loading.

One nested model per component (:mod:`.config_sections`): every field
described, choices as ``Literal``, unknown keys rejected, so a typo is an error
that names the field instead of a silently ignored setting. Numbers must be
finite and a boolean is not a number (``max_steps: true`` is refused, not read
as 1). A file that repeats a key is refused with the key and both lines: YAML
and JSON parsers keep the last value silently.

Profiles are named starting points that differ in how hard each update
pushes the policy (see :data:`PROFILES` and the table in docs/configuration.md):

- ``conservative``: half the steps, a strong pull to the reference model.
- ``balanced``: the defaults.
- ``aggressive``: held less and exploring more: no KL term, clip-higher and
  twice the samples per scenario, at ``balanced``'s step size (three times it
  collapsed a warm-started policy: benchmarks/RESULTS.md, "Profiles").

Every profile sets ``optim.lr: auto``: the Trainer picks the learning rate
from the model's size (2e-4 for the embedded 3.4M-parameter model, 1e-6 from
500M parameters on, x10 with LoRA), times the profile's ``auto_lr_scale``
(:mod:`turnrl.training.auto_lr`). An ``optim.lr`` number overrides it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from turnrl.training.algorithms import algorithm_for
from turnrl.training.config_files import read_config_file
from turnrl.training.config_run import EvalConfig, MismatchConfig, RunConfig, WandbConfig
from turnrl.training.config_sections import (
    AlgorithmConfig,
    GenerationSettings,
    LoraSettings,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    Section,
)

__all__ = [  # the sections are part of this module's API: TrainingConfig is made of them
    "PROFILES",
    "AlgorithmConfig",
    "EvalConfig",
    "GenerationSettings",
    "LoraSettings",
    "MismatchConfig",
    "ModelConfig",
    "OptimConfig",
    "RolloutConfig",
    "RunConfig",
    "TrainingConfig",
    "WandbConfig",
]

ProfileName = Literal["conservative", "balanced", "aggressive"]


class TrainingConfig(Section):
    """Everything a training run needs, in nested sections."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="Model loading.")
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Sampling."
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollouts.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Algorithm.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimization.")
    mismatch: MismatchConfig = Field(
        default_factory=MismatchConfig, description="Rollout/trainer mismatch correction."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    run: RunConfig = Field(default_factory=RunConfig, description="Run directory and length.")
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="wandb logging.")

    @model_validator(mode="after")
    def _check_group_estimator(self) -> TrainingConfig:
        compares_group = algorithm_for(self.algorithm).compares_group
        if self.rollout.num_generations < 2 and compares_group:
            raise ValueError(
                f"rollout.num_generations={self.rollout.num_generations}: the "
                f"{self.algorithm.estimator!r} estimator compares episodes within a group, "
                "so it needs num_generations >= 2"
            )
        loss = algorithm_for(self.algorithm).loss
        if self.mismatch.correction != "none" and not loss.takes_importance_weights:
            raise ValueError(
                f"mismatch.correction={self.mismatch.correction!r} weights the terms of a PPO "
                f"ratio, and the {loss.name} loss of estimator={self.algorithm.estimator!r} has "
                "none (its gradient does not assume the responses came from the policy being "
                "trained); set mismatch.correction: none (train/mismatch_kl is still measured), "
                "or train a PPO-clip estimator"
            )
        if self.rollout.min_group_size > self.rollout.num_generations:
            raise ValueError(
                f"rollout.min_group_size={self.rollout.min_group_size} exceeds "
                f"rollout.num_generations={self.rollout.num_generations}"
            )
        return self

    @classmethod
    def from_profile(cls, name: ProfileName = "balanced", **overrides: Any) -> TrainingConfig:
        """A profile's settings with overrides applied.

        Overrides are either whole sections (``optim={"lr": 3e-4}``) or dotted
        paths written with double underscores (``optim__lr=3e-4``).

        Raises:
            ValueError: Unknown profile, or an override that fails validation.
        """
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
        data = deep_merge({}, PROFILES[name])
        if "profile" in cls.model_fields:  # an ExperimentConfig records its profile
            data["profile"] = name
        for key, value in overrides.items():
            path = key.split("__")
            patch: Any = value.model_dump() if isinstance(value, BaseModel) else value
            for part in reversed(path):
                patch = {part: patch}
            data = deep_merge(data, patch)
        source = f"profile {name!r}" + (" with overrides" if overrides else "")
        return cls.validate_data(data, source=source)

    @classmethod
    def validate_data(cls, data: dict[str, Any], *, source: str = "config") -> TrainingConfig:
        """Validate a dict, turning pydantic's errors into one readable message."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ValueError(f"invalid {source}:\n{describe_errors(e)}") from None

    @classmethod
    def load(cls, path: str | Path) -> TrainingConfig:
        """Load a ``.json``, ``.yaml`` or ``.yml`` file.

        A top-level ``profile: NAME`` key starts from that profile. A custom
        estimator's factory is imported and checked
        (see :func:`turnrl.training.estimators.build_estimator`).

        Raises:
            FileNotFoundError: No such file.
            ValueError: Unparsable, a repeated key, settings that fail
                validation, or an experiment file (which names its environment:
                :func:`turnrl.load_experiment` reads those).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = read_config_file(path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a mapping at the top level, got {type(data).__name__}"
            )
        parts = sorted(EXPERIMENT_PARTS & data.keys())
        if parts:
            raise ValueError(
                f"{path} is an experiment file (it has {', '.join(parts)}), not a training "
                "config alone: load it with turnrl.load_experiment(path), or build and run it "
                "with turnrl.Experiment.from_yaml(path); its training settings alone are "
                "load_experiment(path).training_config()"
            )
        profile = data.pop("profile", None)
        if profile is not None:
            if profile not in PROFILES:
                raise ValueError(
                    f"{path}: unknown profile {profile!r}; choose one of {sorted(PROFILES)}"
                )
            data = deep_merge(deep_merge({}, PROFILES[profile]), data)
        config = cls.validate_data(data, source=str(path))
        from turnrl.training.estimators import check_estimator  # it imports this module

        check_estimator(config.algorithm, source=str(path))
        return config

    def save(self, path: str | Path) -> None:
        """Write the config as JSON."""
        Path(path).write_text(self.model_dump_json(indent=2), encoding="utf-8")

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML (written to ``path`` when given), every setting spelled out.

        The file loads back to an equal config: with :meth:`load` for a
        training config, with :func:`turnrl.load_experiment` (and runs with
        ``turnrl train``) for an experiment. An experiment's own parts
        (``profile``, ``environment``, ...) come first.
        """
        data = self.model_dump(mode="json")
        own = [key for key in data if key not in TrainingConfig.model_fields]
        data = {key: data[key] for key in [*own, *TrainingConfig.model_fields]}
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


EXPERIMENT_PARTS = frozenset({"environment", "scenarios", "rewards", "warmstart"})
"""Top-level keys of an experiment file that a training config does not have."""

PROFILES: dict[str, dict[str, Any]] = {
    "conservative": {
        "algorithm": {"beta": 0.1, "clip_eps_low": 0.1, "clip_eps_high": 0.1},
        "optim": {"lr": "auto", "auto_lr_scale": 0.5, "max_grad_norm": 0.5, "warmup_steps": 10},
        "rollout": {"num_generations": 8},
    },
    "balanced": {
        "algorithm": {"beta": 0.04, "clip_eps_low": 0.2, "clip_eps_high": 0.2},
        "optim": {"lr": "auto", "auto_lr_scale": 1.0, "max_grad_norm": 1.0, "warmup_steps": 5},
        "rollout": {"num_generations": 8},
    },
    "aggressive": {
        "algorithm": {"beta": 0.0, "clip_eps_low": 0.2, "clip_eps_high": 0.28},
        "optim": {"lr": "auto", "auto_lr_scale": 1.0, "max_grad_norm": 1.0, "warmup_steps": 5},
        "rollout": {"num_generations": 16},
    },
}


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` applied: nested mappings merge, other values replace."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def describe_errors(error: ValidationError) -> str:
    """One line per problem of a validation error: the dotted field and what is wrong."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        shown = (
            item["loc"] and item["type"] != "missing" and not isinstance(item.get("input"), dict)
        )
        got = f" (got {item['input']!r})" if shown else ""
        message = item["msg"].removeprefix("Value error, ")  # pydantic's prefix says nothing
        lines.append(f"  {where}: {message}{got}")
    return "\n".join(lines)
