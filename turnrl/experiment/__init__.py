"""Experiments: a training run named in full, as a file or as Python objects.

An experiment is a :class:`~turnrl.training.config.TrainingConfig` plus what a
script would otherwise build by hand (the environment, scenarios, rewards and
an optional supervised warm-start), each named by import path. ``turnrl train``
reads one from a YAML or JSON file; a script loads or writes the same thing
with :mod:`.config` and builds it with :mod:`.build`; :mod:`.sweep` trains one over a
grid of learning rates and KL coefficients (``turnrl sweep``).
"""

from turnrl.experiment.build import Experiment, build_experiment
from turnrl.experiment.config import ExperimentConfig, load_experiment

__all__ = ["Experiment", "ExperimentConfig", "build_experiment", "load_experiment"]
