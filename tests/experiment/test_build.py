"""turnrl.experiment.build: scenario splits (the experiment itself is built in test_config.py)."""

import pytest

from turnrl.experiment.build import build_scenarios
from turnrl.experiment.config import ScenarioSpec
from turnrl.scenarios import load_scenarios, split_scenarios

QUESTIONS = ["q0", "q1", "q2", "q3"]
FACTORY = {"target": "turnrl.scenarios:load_scenarios", "args": {"source": QUESTIONS}}
ALL = load_scenarios(QUESTIONS)


def test_split_seed_none_holds_out_the_first_scenarios():
    train, held_out = build_scenarios(ScenarioSpec(train=FACTORY, eval_size=1, split_seed=None))
    assert (train, held_out) == (ALL[1:], ALL[:1])
    # eval_fraction: round(4 * 0.5) = 2 held out
    train, held_out = build_scenarios(
        ScenarioSpec(train=FACTORY, eval_fraction=0.5, split_seed=None)
    )
    assert (train, held_out) == (ALL[2:], ALL[:2])


def test_a_split_seed_picks_at_random_as_split_scenarios_does():
    train, held_out = build_scenarios(ScenarioSpec(train=FACTORY, eval_size=2, split_seed=3))
    assert (train, held_out) == split_scenarios(ALL, eval_size=2, seed=3)


def test_split_seed_none_refuses_to_hold_out_everything():
    with pytest.raises(ValueError, match="cannot hold out 4 of 4 scenarios"):
        build_scenarios(ScenarioSpec(train=FACTORY, eval_size=4, split_seed=None))
