"""``python -m turnrl.cli ARGS``: the ``turnrl`` command."""

from turnrl.cli.main import main

raise SystemExit(main())
