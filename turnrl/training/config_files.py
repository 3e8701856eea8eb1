"""Reading config files: YAML and JSON that refuse a repeated key.

YAML and JSON parsers keep the last of two equal keys in a mapping without a
word, so a file that sets ``lr`` twice trains with whichever came last. Here
a repeated key is an error naming the file, the key and (for YAML) both lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping repeating a key (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first.line + 1}); "
                    "keep one of them",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` that refuses repeated keys.

    Raises:
        ValueError: Not valid YAML, or a mapping repeats a key; the message
            names ``source``, the line and the key.
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ValueError(f"{where}: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: not valid YAML: {e}") from None


def _unique_pairs(source: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"{source}: duplicate key {key!r}; keep one of them")
            out[key] = value
        return out

    return pairs_to_dict


def read_config_file(path: Path) -> Any:
    """The parsed content of a ``.json`` (by suffix) or YAML file, refusing repeated keys.

    Raises:
        ValueError: Not valid JSON/YAML, or a mapping repeats a key (the
            message names the file, the key and, for YAML, the lines).
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        return parse_yaml(text, str(path))
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs(str(path)))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None


def read_json_object(file: Path, error: type[Exception] = ValueError, hint: str = "") -> dict:
    """The JSON object in ``file``, or ``error`` naming the file (and ``hint``, the fix).

    Raises:
        error: The file is not valid JSON or holds something other than an object.
    """
    suffix = f"; {hint}" if hint else ""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{file}: not valid JSON ({e}){suffix}") from None
    if not isinstance(data, dict):
        raise error(f"{file}: expected a JSON object, got {type(data).__name__}{suffix}")
    return data
