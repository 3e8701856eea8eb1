"""The ``turnrl`` command line, and the experiment files it runs.

``turnrl COMMAND`` (or ``python -m turnrl.cli COMMAND``) parses its arguments
in :mod:`turnrl.cli.main` and runs the ``command`` of one module per command:
:mod:`~turnrl.cli.demo`, :mod:`~turnrl.cli.train`, :mod:`~turnrl.cli.sweep`,
:mod:`~turnrl.cli.evaluate`, :mod:`~turnrl.cli.report`, :mod:`~turnrl.cli.chat`
(episodes played by :mod:`~turnrl.cli.play`), :mod:`~turnrl.cli.export`.
Experiment files are read and built by the library (:mod:`turnrl.experiment`),
so a script runs them as the command does. The library (``turnrl.*`` outside
this package) never imports it.
"""

from turnrl.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
