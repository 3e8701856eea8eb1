"""Kept for the import path README.md documents: :mod:`turnrl.plots` and :mod:`turnrl.cli.report`.

The library does not import this module.
"""

from turnrl.cli.report import format_summary, summarize_run  # noqa: F401
from turnrl.plots import moving_average, plot_run, series  # noqa: F401
