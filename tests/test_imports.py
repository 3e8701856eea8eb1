"""turnrl.imports: the one resolver of `package.module:Name` (experiments, estimators)."""

import json
import os.path
import sys
import textwrap
import uuid

import pytest

from turnrl.environments.tasks import ArithmeticEnvironment
from turnrl.imports import import_dirs, import_object
from turnrl.training.estimators import estimator_factory


def test_resolves_modules_and_dotted_attributes():
    assert import_object("turnrl.environments.tasks:ArithmeticEnvironment") is ArithmeticEnvironment
    assert import_object("os:path.join") is os.path.join
    assert import_object("os.path:join.__name__") == "join"


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("turnrl.environments", "expected an import path 'package.module:Name'"),
        (":X", "expected an import path"),
        ("os:", "expected an import path"),
        ("no_such_module_xyz:X", "no module named 'no_such_module_xyz' on the Python path"),
        ("no_such_dir/game.py:X", "no such file \\(looked for .*no_such_dir/game.py"),
        ("pkg/game.txt:X", "a file target names a .py file"),
        ("os:path.nope", "cannot import 'path.nope' from 'os' \\(no attribute 'nope'\\)"),
    ],
)
def test_bad_paths_say_what_is_wrong(path, named):
    with pytest.raises(ValueError, match=named):
        import_object(path)


def test_estimator_paths_resolve_through_it(monkeypatch):
    calls = []

    def spy(path):
        calls.append(path)
        return import_object(path)

    monkeypatch.setattr("turnrl.training.algorithms.import_object", spy)
    factory = estimator_factory("turnrl.training.advantages:make_rloo")
    assert calls == ["turnrl.training.advantages:make_rloo"] and factory.__name__ == "make_rloo"
    with pytest.raises(ValueError, match="estimator 'os:nope': cannot import 'nope' from 'os'"):
        estimator_factory("os:nope")


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """``(directory, module name)``: a module off the Python path, importing a sibling file.

    The working directory is elsewhere, and the module names are new to this
    process (removed from ``sys.modules`` afterwards).
    """
    name = f"user_game_{uuid.uuid4().hex[:8]}"
    here = tmp_path / "experiment"
    here.mkdir()
    (here / f"{name}_rules.py").write_text("LIMIT = 7\n")
    (here / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            from {name}_rules import LIMIT

            class Game:
                limit = LIMIT
            """
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    yield here, name
    for module in [m for m in sys.modules if m.startswith(name) or m.startswith("turnrl_file_")]:
        del sys.modules[module]


def test_a_module_beside_the_experiment_imports_and_leaves_sys_path_alone(user_dir):
    here, name = user_dir
    path_before = list(sys.path)
    with pytest.raises(ValueError, match=f"no module named '{name}'(.|\n)*{here.parent}"):
        import_object(f"{name}:Game")  # not on the path, nor in the working directory
    with import_dirs(here):
        game = import_object(f"{name}:Game")
    assert game.limit == 7  # its own `from ..._rules import LIMIT` found the sibling file
    assert sys.path == path_before
    assert import_object(f"{name}:Game") is game  # imported once, like any module


def test_the_message_for_a_missing_module_says_where_it_looked_and_how_to_fix_it(user_dir):
    here, _ = user_dir
    with import_dirs(here), pytest.raises(ValueError) as error:
        import_object("guess_game_user:GuessGame")
    message = str(error.value)
    assert str(here) in message and str(here.parent / "elsewhere") in message
    assert "put guess_game_user.py next to the experiment file" in message
    assert "'path/to/guess_game_user.py:GuessGame'" in message


def test_file_targets_relative_to_the_experiment_then_the_cwd_or_absolute(user_dir):
    here, name = user_dir
    with import_dirs(here):
        relative = import_object(f"{name}.py:Game")
    assert relative.limit == 7
    assert import_object(f"{here / name}.py:Game") is relative  # one module per file
    (here.parent / "elsewhere" / "local_rules.py").write_text("def rule():\n    return 3\n")
    assert import_object("local_rules.py:rule")() == 3  # the working directory
    assert import_object("./local_rules.py:rule")() == 3
    assert "local_rules" not in sys.modules  # a name of its own: no stand-in for a package


def test_a_module_on_the_python_path_wins_over_a_file_of_the_same_name(user_dir):
    here, _ = user_dir
    (here / "json.py").write_text("def dumps(x):\n    return 'shadowed'\n")
    with import_dirs(here):
        assert import_object("json:dumps") is json.dumps


def test_a_missing_import_inside_the_users_module_is_named(user_dir):
    here, _ = user_dir
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (here / f"{name}.py").write_text("import no_such_dependency_xyz\n")
    with import_dirs(here), pytest.raises(ValueError, match="No module named 'no_such_dep"):
        import_object(f"{name}:X")
