"""Every fenced code block in README.md and docs/*.md runs, or says why it does not.

A block's info string decides what happens to it:

- ``python``: executed in-process as ``__main__``, in a fresh temporary working
  directory that sees the repository's ``examples/`` and ``benchmarks/``.
  ``python slow`` is the same, marked ``slow``.
- ``bash``: each command runs in a shell in such a directory and must succeed.
- ``bash no-run: REASON``: not run (a long job, an install); the reason is
  required, and each command is checked: the program is one we document, a
  ``turnrl`` subcommand and its options exist, a script exists and defines the
  options given, a ``pip`` extra exists, every repository path it names exists.
- ``yaml``: a whole experiment file (it has ``environment``) is checked with
  ``turnrl train FILE --dry-run``; any other block must validate as
  ``TrainingConfig`` sections.
- ``text``: a diagram or a listing, not code.

The docs also stay inside the repository: relative links resolve to files in it.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import turnrl

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "bash", "yaml", "text"}
PROGRAMS = {"turnrl", "python", "pip", "pytest", "torchrun"}
SHARED_DIRS = ("examples", "benchmarks")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its info string and its text."""

    doc: Path
    line: int
    info: str
    code: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info else ""

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(r"^```(.*)$")


def blocks_of(doc: Path) -> list[Block]:
    """The fenced blocks of a markdown file (``` fences, not indented)."""
    found, lines = [], doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{doc.name}:{start}: unclosed code block"
        found.append(Block(doc, start, opening.group(1).strip(), "\n".join(body) + "\n"))
        i += 1
    return found


BLOCKS = [block for doc in DOCS for block in blocks_of(doc)]


def blocks(language: str) -> list:
    """The blocks of one language as pytest params, ``slow`` ones marked."""
    params = []
    for block in BLOCKS:
        if block.language != language:
            continue
        marks = [pytest.mark.slow] if "slow" in block.info.split()[1:] else []
        params.append(pytest.param(block, id=block.name, marks=marks))
    return params


def commands(block: Block) -> list[str]:
    """The commands of a shell block: ``\\`` continuations joined, comments dropped."""
    joined = block.code.replace("\\\n", " ")
    return [
        line for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")
    ]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory that sees the repository's examples and benchmarks."""
    for name in SHARED_DIRS:
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    return tmp_path


# --- the documents themselves ----------------------------------------------------------


def test_documents_exist_and_readme_is_a_front_door():
    names = {doc.name for doc in DOCS}
    for page in (
        "environments.md",
        "rewards.md",
        "algorithms.md",
        "configuration.md",
        "scaling-out.md",
        "checkpoints-and-failures.md",
        "tools.md",
        "benchmarks.md",
        "design.md",
    ):
        assert page in names, f"docs/{page} is missing"
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the front door holds at most 200"


@pytest.mark.parametrize("block", [pytest.param(b, id=b.name) for b in BLOCKS])
def test_every_block_says_what_it_is(block):
    assert block.language in LANGUAGES, (
        f"{block.name}: code block with info string {block.info!r}; "
        f"start it with one of {sorted(LANGUAGES)}"
    )
    if "no-run" in block.info:
        assert block.language == "bash", f"{block.name}: only bash blocks may be no-run"
        reason = block.info.partition("no-run")[2].lstrip(":").strip()
        assert reason, f"{block.name}: write why it is not run: ```bash no-run: REASON"


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_links_stay_inside_the_repository(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_package_docstring_points_inside_the_repository():
    assert "../" not in turnrl.__doc__
    assert "docs/design.md" in turnrl.__doc__
    assert (ROOT / "docs" / "design.md").is_file()


def resolve(dotted: str) -> object:
    """The object a dotted name such as ``turnrl.environments.TurnLimit`` names.

    Raises:
        AttributeError: A part that is neither an attribute nor a submodule.
    """
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if not hasattr(obj, part) and isinstance(obj, type(turnrl)):
            with contextlib.suppress(ModuleNotFoundError):
                importlib.import_module(".".join(parts[: i + 1]))
        obj = getattr(obj, part)  # raises AttributeError, naming the missing part
    return obj


def is_public(module: object, name: str) -> bool:
    """``name`` is part of ``module``'s API: in its ``__all__`` if it has one, else not private."""
    if hasattr(module, "__path__") and importlib.util.find_spec(f"{module.__name__}.{name}"):
        return True  # a submodule
    exported = getattr(module, "__all__", None)
    return name in exported if exported is not None else not name.startswith("_")


def turnrl_references(code: str) -> list[tuple[str, bool]]:
    """``(dotted name, must be public)`` for every turnrl name a snippet imports or uses.

    ``from M import N`` gives ``M.N`` (public in M); ``turnrl.A.B`` written out gives
    ``turnrl.A`` (public in turnrl) and ``turnrl.A.B`` (an attribute).
    """
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "turnrl":
            found += [(f"{node.module}.{alias.name}", True) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, False) for a in node.names if a.name.split(".")[0] == "turnrl"]
    for chain in re.findall(r"(?<![\w.])turnrl(?:\.[A-Za-z_]\w*)+", code):
        parts = chain.split(".")
        found += [(".".join(parts[:2]), True), (chain, False)]
    return found


@pytest.mark.parametrize("block", blocks("python"))
def test_python_names_import_from_where_the_snippet_says(block):
    """Every turnrl name a snippet imports or spells out exists there, and is public."""
    for dotted, public in turnrl_references(block.code):
        try:
            obj = resolve(dotted)
        except (AttributeError, ModuleNotFoundError) as e:
            pytest.fail(f"{block.name}: {dotted} does not exist ({e})")
        module, _, name = dotted.rpartition(".")
        if public and module:
            assert obj is not None and is_public(importlib.import_module(module), name), (
                f"{block.name}: {name} is not public in {module}"
            )


@pytest.mark.parametrize("block", blocks("python"))
def test_python_block_defines_every_name_it_uses(block):
    """A snippet runs as written: no name comes from an earlier block or nowhere.

    Running a block finds an undefined name only on the lines it executes; this
    reads all of them (ruff's F821, undefined name).
    """
    ruff = [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F821"]
    done = subprocess.run(
        [*ruff, "--output-format", "concise", "--stdin-filename", "snippet.py", "-"],
        input=block.code,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"{block.name}: {done.stdout or done.stderr}"


SPAN = re.compile(r"`([^`\n]+)`")
# `Name(...)` (from `module`), `Name` (in `module`), `Name` in `module`
HOME = re.compile(r"`([A-Za-z_]\w*)[^`]*`\s+\(?(?:from|in)\s+`(turnrl(?:\.\w+)*)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_prose_names_import_from_where_the_docs_say(doc):
    """``turnrl.x.Y`` in the prose exists, and so does `Y` "in/from `turnrl.x`"."""
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)  # prose only
    for span in SPAN.findall(text):
        dotted = re.match(r"turnrl(?:\.[A-Za-z_]\w*)+", span)
        if dotted:
            try:
                resolve(dotted.group())
            except (AttributeError, ModuleNotFoundError) as e:
                pytest.fail(f"{doc.name}: `{span}` names nothing ({e})")
    for name, module in HOME.findall(text):
        assert is_public(importlib.import_module(module), name), (
            f"{doc.name}: `{name}` is not public in {module}"
        )


# --- running the blocks --------------------------------------------------------------------


@pytest.mark.parametrize("block", blocks("python"))
def test_python_block_runs(block, workdir, monkeypatch):
    monkeypatch.setattr(sys, "argv", [block.name])
    code = compile(block.code, block.name, "exec")
    exec(code, {"__name__": "__main__", "__file__": str(workdir / "snippet.py")})


def run_shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("block", [p for p in blocks("bash") if "no-run" not in p.values[0].info])
def test_bash_block_runs(block, workdir):
    for command in commands(block):
        done = run_shell(command, workdir)
        assert done.returncode == 0, f"{block.name}: `{command}` failed:\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("block", blocks("yaml"))
def test_yaml_block_is_a_valid_config(block, workdir):
    data = yaml.safe_load(block.code)
    assert isinstance(data, dict), f"{block.name}: not a mapping"
    if "environment" not in data:
        turnrl.TrainingConfig(**data)
        return
    path = workdir / "experiment.yaml"
    path.write_text(block.code)
    done = run_shell(f"turnrl train {path} --dry-run", workdir)
    assert done.returncode == 0, f"{block.name}: --dry-run failed:\n{done.stderr[-3000:]}"


# --- checking the commands that are not run --------------------------------------------------


def cli_help(args: list[str]) -> str:
    """``turnrl ARGS --help``, through the console script's own function."""
    module, _, function = PYPROJECT["project"]["scripts"]["turnrl"].partition(":")
    main = getattr(importlib.import_module(module), function)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as ended:
        main([*args, "--help"])
    assert ended.value.code == 0, f"`turnrl {' '.join(args)}` is not a command"
    return out.getvalue()


def script_options(script: Path) -> set[str]:
    """The ``--options`` a script's argparse parser defines (read, not run)."""
    options = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("-"):
                    options.add(arg.value)
    return options


def options_of(args: list[str]) -> list[str]:
    return [a.split("=")[0] for a in args if a.startswith("-")]


def repo_paths_of(args: list[str]) -> list[str]:
    prefixes = ("examples/", "benchmarks/", "tests/", "docs/", "turnrl/")
    return [a for a in args if a.startswith(prefixes)]


def check_turnrl(args: list[str]) -> None:
    sub = [a for a in args if not a.startswith("-")][:1]
    help_text = cli_help(sub)
    for option in options_of(args):
        assert re.search(rf"(?<![\w-]){re.escape(option)}\b", help_text), (
            f"`turnrl {' '.join(sub)}` has no option {option}"
        )


def check_script(args: list[str]) -> None:
    scripts = [a for a in args if a.endswith(".py")]
    assert scripts, f"no script in `{' '.join(args)}`"
    script = ROOT / scripts[0]
    assert script.is_file(), f"{scripts[0]} does not exist"
    defined = script_options(script)
    after = args[args.index(scripts[0]) + 1 :]
    for option in options_of(after):
        assert option in defined, f"{scripts[0]} defines no option {option}"


def check_pip(args: list[str]) -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for arg in args:
        for group in re.findall(r"\[([\w,]+)\]", arg):
            for extra in group.split(","):
                assert extra in extras, f"pyproject.toml has no extra [{extra}]"


def check_pytest(args: list[str]) -> None:
    markers = " ".join(PYPROJECT["tool"]["pytest"]["ini_options"]["markers"])
    if "-m" in args:
        marker = args[args.index("-m") + 1]
        assert re.search(rf"\b{marker}:", markers), f"no pytest marker {marker!r}"


@pytest.mark.parametrize("block", [p for p in blocks("bash") if "no-run" in p.values[0].info])
def test_bash_no_run_block_parses(block):
    for command in commands(block):
        args = shlex.split(command, comments=True)
        while re.fullmatch(r"[A-Z_]+=\S*", args[0]):  # OMP_WAIT_POLICY=PASSIVE python ...
            args = args[1:]
        program = args[0]
        assert program in PROGRAMS, f"{block.name}: unexpected program {program!r}"
        for path in repo_paths_of(args):
            assert (ROOT / path).exists(), f"{block.name}: {path} does not exist"
        if program == "turnrl":
            check_turnrl(args[1:])
        elif program in ("python", "torchrun"):
            check_script(args[1:])
        elif program == "pip":
            check_pip(args[1:])
        else:
            check_pytest(args[1:])
