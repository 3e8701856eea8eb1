"""Objects named by import path, ``package.module:Name``: how configs name code.

An experiment file names its environment, scenario factories and reward
functions this way, and ``algorithm.estimator`` may name an estimator factory;
both resolve the name with :func:`import_object`.
"""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str) -> Any:
    """The object at ``package.module:Name`` (``Name`` may be dotted: ``module:Class.method``).

    >>> import_object("math:pi")
    3.141592653589793

    Raises:
        ValueError: The path is not ``package.module:Name``, the module cannot
            be imported, or it has no such attribute; the message names which.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{path!r}: expected an import path 'package.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except (ImportError, ValueError) as e:
        raise ValueError(f"{path!r}: cannot import {attr!r} from {module_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(
                f"{path!r}: cannot import {attr!r} from {module_name!r} (no attribute {part!r})"
            )
        obj = getattr(obj, part)
    return obj
