"""Kept for the import path README.md documents; the module is now :mod:`.from_gym`."""

from turnrl.environments.from_gym import (  # noqa: F401
    ActionParseError,
    DiscreteCodec,
    GymEnvironment,
    TextCodec,
    seeded_scenarios,
)
