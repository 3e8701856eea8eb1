"""Scenarios from data: lists, JSON/JSONL files and local Hugging Face datasets.

:func:`load_scenarios` turns records into :class:`~turnrl.types.Scenario`
objects; :func:`split_scenarios` holds some out for evaluation::

    scenarios = load_scenarios("questions.jsonl", system="Answer with a number.")
    train, held_out = split_scenarios(scenarios, eval_fraction=0.1)
    env = MyEnvironment(train)
    trainer = Trainer(agent, env, rewards, config, eval_scenarios=held_out)

A record (a JSON object, a dataset row, a dict) becomes one scenario:

* ``record[prompt_field]`` is the prompt: a string is one user message; a list
  of ``{"role", "content"}`` objects is the messages as they are.
* ``id`` is ``record[id_field]``; by default the ``"id"`` field if the record
  has one, else ``"<name>-<index>"`` (``name``: the file's stem, or
  ``"scenario"`` for in-memory sources; ``index``: the record's position,
  counting from 0).
* Every other field goes into ``Scenario.data`` (``answer``, ``persona``,
  ...), where environments and reward functions read it.

Choices, and why:

* **Local data only.** A string is always a path. A name that is not an
  existing file or directory is an error, never a Hugging Face Hub download:
  training must not depend on the network, and a typo in a path must not
  turn into a download. To use a Hub dataset, download it once
  (``datasets.load_dataset(name).save_to_disk(dir)``) and load ``dir``.
* JSON and JSONL are read with the standard library, so line numbers in
  errors are exact and ``datasets`` is not needed for them. A ``.json`` file
  is a list of records if its text starts with ``[``, else JSON Lines (as
  ``datasets`` reads it). Parquet, CSV and ``save_to_disk`` directories go
  through ``datasets``, imported only then (``pip install datasets``).
* ``system`` is a default: it is prepended only to prompts that do not start
  with a system message of their own.
* Arrow (behind Parquet, CSV and ``datasets``) gives every row every column
  and every message every key seen in the column, with ``None`` where one is
  absent. So in dataset rows a ``None`` field is a missing one and is left
  out of ``data``, and ``None``-valued message keys are dropped everywhere:
  such rows load like the JSON records they came from.
* A ``data`` field holding an object is merged into ``Scenario.data``, so a
  file of ``Scenario.model_dump()`` records loads back unchanged.
* ``Scenario`` objects in a list pass through as they are (no ``system``).
* Ids must be distinct: they group rollouts, name samples in logs, and a
  duplicate could land on both sides of a split.
* :func:`split_scenarios` picks the held-out set with ``random.Random(seed)``
  and keeps the input order on both sides: the same input and seed always
  give the same split (the selection is the one of
  ``turnrl.environments.tasks.arithmetic.split_scenarios``).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from turnrl.types import Message, Scenario

__all__ = ["load_scenarios", "record_to_scenario", "split_scenarios"]

DATASETS_SUFFIXES = (".parquet", ".csv")
SUFFIXES = (".jsonl", ".json", *DATASETS_SUFFIXES)

# Each record comes with where it was found ("data.jsonl:3", "item 2"), for errors.
_Located = Iterator[tuple[str, Any]]


def load_scenarios(
    source: str | os.PathLike[str] | Iterable[Scenario | Mapping[str, Any] | str] | Any,
    *,
    prompt_field: str | None = "prompt",
    id_field: str | None = None,
    system: str | None = None,
    split: str | None = None,
    name: str | None = None,
) -> list[Scenario]:
    """Scenarios from a list, a local file or directory, or a ``datasets`` object.

    Args:
        source: One of:

            * a list (any iterable) of ``Scenario`` objects, record dicts, or
              prompt strings (each one user message);
            * a path to a ``.jsonl`` file (one record per line), a ``.json``
              file (a list of records), or a ``.parquet`` / ``.csv`` file;
            * a path to a directory written by ``Dataset.save_to_disk`` or
              ``DatasetDict.save_to_disk``;
            * a ``datasets.Dataset``, ``IterableDataset`` or ``DatasetDict``.
        prompt_field: The record field holding the prompt. ``None``: records
            have no prompt and every field goes into ``data`` (for
            environments that build the opening from data).
        id_field: The record field holding the id. ``None``: ``"id"`` if the
            record has it, else ``"<name>-<index>"``.
        system: A system message put first in every prompt that has none.
        split: Which split of a ``DatasetDict`` to load. ``None``: the only
            split, or ``"train"``.
        name: Prefix of index-based ids. ``None``: the file's or directory's
            stem, or ``"scenario"`` for in-memory sources.

    Returns:
        The scenarios, in the source's order.

    Raises:
        FileNotFoundError: ``source`` is a string or path that does not exist
            (only local files are loaded, never the Hugging Face Hub).
        ImportError: The source needs ``datasets`` and it is not installed.
        ValueError: A record cannot become a scenario (the message names the
            file and line or row), the file format is not supported, or two
            scenarios share an id.
        TypeError: ``source`` is of no accepted kind.
    """
    records, default_name = _records(source, split)
    prefix = name if name is not None else default_name
    options = {"prompt_field": prompt_field, "id_field": id_field, "system": system}
    scenarios: list[Scenario] = []
    first_seen: dict[str, str] = {}
    for index, (where, item) in enumerate(records):
        if isinstance(item, Scenario):
            scenario = item
        else:
            if isinstance(item, str) and prompt_field is not None:
                item = {prompt_field: item}
            scenario = record_to_scenario(item, index=index, where=where, name=prefix, **options)
        if scenario.id in first_seen:
            raise ValueError(
                f"{where}: duplicate scenario id {scenario.id!r} (first at "
                f"{first_seen[scenario.id]}); ids must be distinct"
            )
        first_seen[scenario.id] = where
        scenarios.append(scenario)
    return scenarios


def record_to_scenario(
    record: Mapping[str, Any],
    *,
    index: int,
    where: str | None = None,
    prompt_field: str | None = "prompt",
    id_field: str | None = None,
    system: str | None = None,
    name: str = "scenario",
) -> Scenario:
    """One record as a scenario (the field mapping of :func:`load_scenarios`).

    Args:
        record: The record's fields.
        index: Its position in the source, for the default id.
        where: Where it was found, for error messages (default: ``"record <index>"``).
        prompt_field: See :func:`load_scenarios`.
        id_field: See :func:`load_scenarios`.
        system: See :func:`load_scenarios`.
        name: Prefix of the index-based id.

    Raises:
        ValueError: The record is not an object, lacks a field, or has a
            prompt or id of the wrong form. The message starts with ``where``.

    >>> s = record_to_scenario({"prompt": "What is 3+4?", "answer": 7}, index=2, name="q")
    >>> s.id, [(m.role, m.content) for m in s.prompt], s.data
    ('q-2', [('user', 'What is 3+4?')], {'answer': 7})
    """
    where = where or f"record {index}"
    if not isinstance(record, Mapping):
        raise ValueError(
            f"{where}: expected an object with a {prompt_field!r} field, got "
            f"{type(record).__name__}"
        )
    fields = dict(record)
    prompt: list[Message] = []
    if prompt_field is not None:
        if prompt_field not in fields:
            raise ValueError(
                f"{where}: no prompt field {prompt_field!r} (fields: {sorted(fields)}); "
                "set prompt_field= to the field holding the prompt"
            )
        prompt = _prompt(fields.pop(prompt_field), where, prompt_field)
    if system is not None and not (prompt and prompt[0].role == "system"):
        prompt.insert(0, Message(role="system", content=system))
    scenario_id = _scenario_id(fields, id_field, f"{name}-{index}", where)
    data = fields.pop("data") if isinstance(fields.get("data"), Mapping) else {}
    clash = sorted(set(data) & set(fields))
    if clash:
        raise ValueError(f"{where}: fields {clash} are both top-level and in 'data'")
    return Scenario(id=scenario_id, prompt=prompt, data={**data, **fields})


def split_scenarios(
    scenarios: Sequence[Scenario],
    *,
    eval_fraction: float | None = None,
    eval_size: int | None = None,
    seed: int = 0,
) -> tuple[list[Scenario], list[Scenario]]:
    """Split scenarios into disjoint train and eval lists, deterministically.

    The eval list has ``eval_size`` scenarios, or ``round(len * eval_fraction)``
    of them (at least one, and leaving at least one for training), chosen with
    ``random.Random(seed)``. Both lists keep the input order. With neither
    given, ``eval_fraction=0.1``.

    Args:
        scenarios: Scenarios with distinct ids.
        eval_fraction: Fraction held out for evaluation, in (0, 1).
        eval_size: Number held out, in ``[1, len(scenarios) - 1]``.
        seed: Seed of the choice.

    Returns:
        ``(train, eval)``.

    Raises:
        ValueError: Both or a bad ``eval_fraction`` / ``eval_size``, fewer
            than 2 scenarios, or duplicate ids.

    >>> scenarios = load_scenarios([f"q{i}" for i in range(10)])
    >>> train, held_out = split_scenarios(scenarios, eval_size=2)
    >>> len(train), len(held_out), {s.id for s in train} & {s.id for s in held_out}
    (8, 2, set())
    """
    scenarios = list(scenarios)
    n = len(scenarios)
    if eval_fraction is not None and eval_size is not None:
        raise ValueError("give eval_fraction or eval_size, not both")
    if n < 2:
        raise ValueError(f"need at least 2 scenarios to split, got {n}")
    dupes = sorted(i for i, count in Counter(s.id for s in scenarios).items() if count > 1)
    if dupes:
        raise ValueError(f"scenario ids must be distinct to split, duplicated: {dupes[:5]}")
    if eval_size is not None:
        if isinstance(eval_size, bool) or not isinstance(eval_size, int):
            raise ValueError(f"eval_size must be an integer, got {eval_size!r}")
        if not 1 <= eval_size <= n - 1:
            raise ValueError(
                f"eval_size must be in [1, {n - 1}] for {n} scenarios (train must not be "
                f"empty), got {eval_size}"
            )
        n_eval = eval_size
    else:
        fraction = 0.1 if eval_fraction is None else eval_fraction
        if isinstance(fraction, bool) or not 0.0 < fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {fraction!r}")
        n_eval = min(max(round(n * fraction), 1), n - 1)
    eval_idx = set(random.Random(seed).sample(range(n), n_eval))
    train = [s for i, s in enumerate(scenarios) if i not in eval_idx]
    held_out = [s for i, s in enumerate(scenarios) if i in eval_idx]
    return train, held_out


# --- records -------------------------------------------------------------------


def _records(source: Any, split: str | None) -> tuple[_Located, str]:
    """The located records of a source, and the default id prefix."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return _path_records(path, split), path.stem if path.is_file() else path.name
    if _is_dataset_object(source):
        return _dataset_records(source, "dataset", split), "scenario"
    if isinstance(source, (bytes, Mapping)) or not isinstance(source, Iterable):
        raise TypeError(
            "source must be a path, a list of Scenario / dict / str, or a datasets "
            f"Dataset / DatasetDict; got {type(source).__name__}"
        )
    return ((f"item {i}", item) for i, item in enumerate(source)), "scenario"


def _path_records(path: Path, split: str | None) -> _Located:
    if not path.exists():
        raise FileNotFoundError(
            f"{str(path)!r} is not an existing file or directory. load_scenarios only loads "
            "local files (.jsonl, .json, .parquet, .csv, or a save_to_disk directory), never "
            "the Hugging Face Hub; to use a Hub dataset, download it first with "
            "datasets.load_dataset(name).save_to_disk(dir) and load dir"
        )
    if path.is_dir():
        if not any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
            raise ValueError(
                f"{path} is a directory but not one written by Dataset.save_to_disk "
                "(no state.json or dataset_dict.json); pass a data file instead"
            )
        return _dataset_records(_datasets(path).load_from_disk(str(path)), str(path), split)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_records(path)
    if suffix == ".json":
        return _json_records(path)
    if suffix in DATASETS_SUFFIXES:
        ds = _datasets(path).Dataset
        reader = ds.from_parquet if suffix == ".parquet" else ds.from_csv
        return _dataset_records(reader(str(path)), str(path), split)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of {SUFFIXES}")


def _jsonl_records(path: Path) -> _Located:
    with path.open(encoding="utf-8") as f:
        lines = list(f)
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            yield f"{path}:{lineno}", _parse_json(line, f"{path}:{lineno}")


def _json_records(path: Path) -> _Located:
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        yield from _jsonl_records(path)  # a .json file of JSON Lines, as datasets reads it
        return
    for i, item in enumerate(_parse_json(text, str(path))):
        yield f"{path}: item {i}", item


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON: {e}") from e


def _dataset_records(dataset: Any, where: str, split: str | None) -> _Located:
    if isinstance(dataset, Mapping):  # a DatasetDict
        splits = sorted(dataset)
        if split is None:
            split = splits[0] if len(splits) == 1 else "train"
        if split not in dataset:
            raise ValueError(f"{where}: no split {split!r}; pass split= one of {splits}")
        dataset, where = dataset[split], f"{where}[{split}]"
    for row, record in enumerate(dataset):
        # Arrow cannot tell a missing field from a null one (see the module docstring).
        yield f"{where} row {row}", {k: v for k, v in record.items() if v is not None}


def _is_dataset_object(source: Any) -> bool:
    datasets = sys.modules.get("datasets")  # a datasets object implies datasets is imported
    kinds = ("Dataset", "IterableDataset", "DatasetDict", "IterableDatasetDict")
    return datasets is not None and isinstance(
        source, tuple(getattr(datasets, k) for k in kinds if hasattr(datasets, k))
    )


def _datasets(path: Path) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"loading {path} needs the `datasets` package: pip install datasets "
            "(or use a .jsonl / .json file, which needs nothing extra)"
        ) from e
    return datasets


# --- fields --------------------------------------------------------------------


def _prompt(value: Any, where: str, field: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: field {field!r} is an empty string")
        return [Message(role="user", content=value)]
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"{where}: field {field!r} must be a string or a non-empty list of "
            f"{{'role', 'content'}} objects, got {_describe(value)}"
        )
    messages = []
    for k, message in enumerate(value):
        if isinstance(message, Mapping):
            message = {key: v for key, v in message.items() if v is not None}
        try:
            messages.append(Message.model_validate(message))
        except ValueError as e:
            raise ValueError(f"{where}: {field}[{k}] is not a valid message: {e}") from e
    return messages


def _scenario_id(fields: dict[str, Any], id_field: str | None, default: str, where: str) -> str:
    if id_field is None:
        if "id" not in fields:
            return default
        id_field = "id"
    if id_field not in fields:
        raise ValueError(f"{where}: no id field {id_field!r} (fields: {sorted(fields)})")
    value = fields.pop(id_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise ValueError(
            f"{where}: field {id_field!r} must be a non-empty string or an integer, "
            f"got {_describe(value)}"
        )
    return str(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
