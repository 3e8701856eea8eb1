"""turnrl's public names (``turnrl/__init__.py``): each is its home module's object, and
families are exported whole."""

import importlib
import inspect

import pytest

import turnrl
import turnrl.environments
import turnrl.types


@pytest.mark.parametrize("name", turnrl.__all__)
def test_each_public_name_is_its_home_modules_object(name):
    obj = getattr(turnrl, name)
    home = importlib.import_module(obj.__module__)
    assert home.__name__.startswith("turnrl.") and getattr(home, name) is obj


def test_step_result_lives_with_the_other_data_types():
    from turnrl.types import StepResult

    assert StepResult is turnrl.StepResult is turnrl.environments.StepResult
    assert StepResult.__module__ == "turnrl.types"
    assert StepResult([], 1.0, True, False, {}).terminated is True


def test_the_environment_contract_is_whole_at_the_top_level():
    """Every wrapper (``TurnLimit``, ``Timeout``, ...) and what check_env raises is public."""
    environments = turnrl.environments
    wrappers = {
        name
        for name in environments.__all__
        if inspect.isclass(obj := getattr(environments, name))
        and issubclass(obj, environments.Wrapper)
    }
    assert {"Wrapper", "TurnLimit", "Timeout"} <= wrappers
    missing = (wrappers | {"EnvContractError", "check_env", "StepResult"}) - set(turnrl.__all__)
    assert not missing, f"turnrl.environments has them, turnrl does not: {sorted(missing)}"
