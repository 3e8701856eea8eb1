"""Objects named by import path: how configs name code.

An experiment file names its environment, scenario factories and reward
functions this way, and ``algorithm.estimator`` may name an estimator factory;
all resolve the name with :func:`import_object`. Two forms:

- ``package.module:Name``: imported as Python imports it. A module that is not
  on the Python path is then looked for in the directories given with
  :func:`import_dirs` (an experiment file's own directory) and in the current
  directory, so a ``my_env.py`` beside the experiment file imports as ``my_env``.
- ``path/to/file.py:Name``: the file is loaded. A relative path is looked up in
  the same directories (first the experiment file's, then the current one).

Those directories join ``sys.path`` only while the module is imported, at its
end, so nothing on the Python path is shadowed and nothing stays behind; a
module that imports a sibling file should do so at its top, not later inside a
function.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["import_dirs", "import_object"]

_DIRS: ContextVar[tuple[Path, ...]] = ContextVar("turnrl_import_dirs", default=())
_FORMS = "'package.module:Name' or 'path/to/file.py:Name'"


@contextlib.contextmanager
def import_dirs(*dirs: str | Path | None) -> Iterator[None]:
    """Inside the block, :func:`import_object` also looks in ``dirs`` (None is skipped).

    The directories are searched in order, before the current directory and
    before those of any enclosing block.
    """
    token = _DIRS.set((*(Path(d) for d in dirs if d is not None), *_DIRS.get()))
    try:
        yield
    finally:
        _DIRS.reset(token)


def import_object(path: str) -> Any:
    """The object at ``package.module:Name`` or ``path/to/file.py:Name`` (``Name`` may be dotted).

    >>> import_object("math:pi")
    3.141592653589793

    Raises:
        ValueError: The path has neither form, the module or file cannot be
            found (the message lists where it looked and how to fix it) or
            imported, or it has no such attribute.
    """
    # The last colon: a Windows path has one of its own ("C:\\envs\\game.py:Game").
    module_name, sep, attr = path.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{path!r}: expected an import path {_FORMS}")
    try:
        if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
            obj: Any = _load_file(module_name, path)
        else:
            obj = _import_module(module_name, attr, path)
    except (ImportError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(repr(path)):
            raise  # already says which target and what to do
        raise ValueError(f"{path!r}: cannot import {attr!r} from {module_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(
                f"{path!r}: cannot import {attr!r} from {module_name!r} (no attribute {part!r})"
            )
        obj = getattr(obj, part)
    return obj


def _search_dirs() -> list[Path]:
    """Where a module off the Python path, or a relative file, is looked for, in order."""
    seen: dict[Path, None] = {}
    for directory in (*_DIRS.get(), Path.cwd()):
        seen.setdefault(directory.expanduser().resolve(), None)
    return list(seen)


def _import_module(name: str, attr: str, path: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = name.partition(".")[0]
        if e.name != top:  # the module exists; something it imports does not
            raise
    dirs = _search_dirs()
    found = [d for d in dirs if (d / f"{top}.py").is_file() or (d / top).is_dir()]
    if not found:
        looked = ", ".join(str(d) for d in dirs)
        raise ValueError(
            f"{path!r}: no module named {top!r} on the Python path, nor as {top}.py in {looked}; "
            f"put {top}.py next to the experiment file, install its package (pip install -e .), "
            f"or name the file: 'path/to/{top}.py:{attr}' (relative to the experiment file)"
        )
    importlib.invalidate_caches()  # the file may be newer than the import system's listing
    with _on_path(found[:1]):
        return importlib.import_module(name)


def _load_file(file: str, path: str) -> ModuleType:
    """The module of a ``.py`` file, loaded once per file (under a name of its own)."""
    given = Path(file).expanduser()
    if given.suffix != ".py":
        raise ValueError(f"{path!r}: a file target names a .py file; expected {_FORMS}")
    candidates = [given] if given.is_absolute() else [d / given for d in _search_dirs()]
    found = next((c.resolve() for c in candidates if c.is_file()), None)
    if found is None:
        looked = ", ".join(str(c) for c in candidates)
        raise ValueError(
            f"{path!r}: no such file (looked for {looked}); give the path relative to the "
            "experiment file's directory, or an absolute path"
        )
    # A name no installed package uses, so that the file never stands in for one.
    digest = hashlib.sha1(str(found).encode()).hexdigest()[:10]
    name = f"turnrl_file_{found.stem if found.stem.isidentifier() else 'module'}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, found)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path!r}: {found} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pydantic look their module up while it runs
    try:
        with _on_path([found.parent]):  # its own `import helper` finds helper.py beside it
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@contextlib.contextmanager
def _on_path(dirs: Sequence[Path]) -> Iterator[None]:
    """``dirs`` at the end of ``sys.path`` inside the block; removed again after it."""
    added = [str(d) for d in dirs if str(d) not in sys.path]
    sys.path.extend(added)
    try:
        yield
    finally:
        for entry in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)
