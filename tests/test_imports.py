"""turnrl.imports: the one resolver of `package.module:Name` (experiments, estimators)."""

import os.path

import pytest

from turnrl.environments.tasks import ArithmeticEnvironment
from turnrl.imports import import_object
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
        ("no_such_module_xyz:X", "cannot import 'X' from 'no_such_module_xyz' \\(No module"),
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
