"""Kept for the import path README.md documents; the module is now :mod:`.to_gym`."""

from turnrl.environments.to_gym import TextGymEnv, join_contents  # noqa: F401
