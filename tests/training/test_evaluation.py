"""turnrl.training.evaluation: eval metrics with standard errors over scenarios, eval.metric."""

import doctest

import pytest

from turnrl.training import evaluation
from turnrl.training.config import EvalConfig
from turnrl.training.distributed import DistributedContext
from turnrl.training.evaluation import EvalReport, eval_metrics, metric_key, standard_error
from turnrl.types import Scenario, Trajectory, TrajectoryGroup


def group(name, rewards, bonuses):
    scenario = Scenario(id=name)
    return TrajectoryGroup(
        scenario=scenario,
        trajectories=[
            Trajectory(
                scenario=scenario,
                reward=r,
                reward_components={"env_return": r - b, "bonus": b},
            )
            for r, b in zip(rewards, bonuses, strict=True)
        ],
    )


GROUPS = [
    group("a", [1.0, 0.0], [0.2, 0.4]),
    group("b", [1.0, 1.0], [0.0, 0.0]),
    group("c", [0.0, 0.0], [0.6, 0.6]),
]


def test_stderr_is_over_per_scenario_means_not_episodes():
    metrics = eval_metrics(GROUPS, DistributedContext())
    assert metrics["eval/reward_mean"] == pytest.approx(0.5)  # 3 / 6 episodes
    # Scenario means 0.5, 1.0, 0.0: squared deviations 0 + 0.25 + 0.25 = 0.5;
    # / (3 - 1) = 0.25; / 3 scenarios = 1/12; sqrt = 0.288675.
    # (Over the 6 episodes as if independent it would be sqrt(1.5 / 5 / 6) = 0.2236.)
    assert metrics["eval/reward_mean_stderr"] == pytest.approx((1 / 12) ** 0.5)
    # Each reward component gets one too: bonus means 0.3, 0.0, 0.6: deviations
    # 0, 0.09, 0.09 -> 0.18 / 2 / 3 = 0.03.
    assert metrics["eval/reward/bonus"] == pytest.approx(0.3)
    assert metrics["eval/reward/bonus_stderr"] == pytest.approx(0.03**0.5)
    assert "eval/reward/env_return_stderr" in metrics
    # Counts, spreads and extremes are not means over episodes: no stderr.
    for key in ("episodes", "failed", "reward_std", "reward_max", "reward_min"):
        assert f"eval/{key}" in metrics and f"eval/{key}_stderr" not in metrics


def test_one_scenario_has_no_stderr():
    assert "eval/reward_mean_stderr" not in eval_metrics(GROUPS[:1], DistributedContext())


def test_standard_error_hand_worked_and_doctest():
    assert standard_error([2.0, 4.0, 6.0]) == pytest.approx((4 / 3) ** 0.5)  # var 4, / 3
    with pytest.raises(ValueError, match="at least two"):
        standard_error([1.0])
    assert doctest.testmod(evaluation).failed == 0


def test_metric_key_accepts_both_spellings():
    assert metric_key(EvalConfig()) == "eval/reward_mean"
    assert metric_key(EvalConfig(metric="reward/env_return")) == "eval/reward/env_return"
    assert metric_key(EvalConfig(metric="eval/turns_mean")) == "eval/turns_mean"


def test_eval_report_keeps_before_and_after_with_stderr():
    report = EvalReport(EvalConfig(metric="reward/bonus"))
    metrics = eval_metrics(GROUPS, DistributedContext())
    report.record(0, metrics, before=True)
    report.record(5, metrics | {"eval/reward/bonus": 0.4}, before=False)
    assert report.summary() == {
        "eval_metric": "eval/reward/bonus",
        "eval_before": pytest.approx(0.3),
        "eval_before_stderr": pytest.approx(0.03**0.5),
        "eval_after": 0.4,
        "eval_after_stderr": pytest.approx(0.03**0.5),
    }
    assert report.last_step == 5


def test_an_unknown_eval_metric_names_the_ones_that_exist():
    report = EvalReport(EvalConfig(metric="reward/typo"))
    with pytest.raises(ValueError, match=r"eval.metric 'reward/typo'.*reward/bonus.*reward_mean"):
        report.record(0, eval_metrics(GROUPS, DistributedContext()), before=True)
    # When every episode failed there are no reward metrics to look in: no error.
    report.record(0, {"eval/episodes": 2.0, "eval/failed": 2.0}, before=True)
    assert report.summary()["eval_before"] is None
