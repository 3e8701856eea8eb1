"""turnrl sweep: the interval arithmetic, a 1-step grid end to end, bad input, Ctrl-C."""

import csv
import json
import math

import pytest

from turnrl.cli.main import main
from turnrl.experiment.sweep import Sweep
from turnrl.experiment.sweep_results import (
    T_975,
    Interval,
    mean_ci,
    scenario_means,
    summarize,
    t_quantile,
)
from turnrl.logging import read_metrics
from turnrl.types import Scenario, Trajectory, load_jsonl

# One turn; the reward is the share of digits in the reply, so the random tiny model
# scores something between 0 and 1 that differs between scenarios and samples.
GAME = """
import turnrl
from turnrl.types import user


class DigitGame(turnrl.Environment):
    def __init__(self, scenarios):
        self.scenarios = scenarios

    async def reset(self, *, seed=None, options=None):
        return [user(f"Say {options['scenario'].id}.")], {}

    async def step(self, message):
        text = message.content
        reward = sum(c.isdigit() for c in text) / max(1, len(text))
        return turnrl.StepResult([], reward, True, False, {})
"""

EXPERIMENT = """
environment: {target: digit_game:DigitGame}
scenarios:
  train: {target: turnrl.environments.tasks:make_scenarios, args: {n: 12}}
  eval_size: 3
generation: {max_new_tokens: 4}
rollout: {scenarios_per_step: 2, num_generations: 2}
eval: {every: 0, num_generations: 2}
run: {max_steps: 1, output_dir: runs/game, plot: false, save_final: false}
"""


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """An experiment file with held-out scenarios, its environment beside it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digit_game.py").write_text(GAME)
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    return tmp_path / "exp.yaml"


# --- the arithmetic ----------------------------------------------------------------------


def t_cdf(x, df, steps=4000):
    """Student's t CDF at x > 0: 1/2 plus Simpson's rule over the density from 0 to x."""
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    h = x / steps
    weights = [1] + [4 if i % 2 else 2 for i in range(1, steps)] + [1]
    area = sum(
        w * scale * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i, w in enumerate(weights)
    )
    return 0.5 + area * h / 3


def test_t_quantiles():
    assert t_quantile(1) == 12.706 and t_quantile(30) == 2.042 and len(T_975) == 30
    # Each quantile, table or expansion, puts 97.5% of the distribution below it (the
    # 3-decimal rounding moves the CDF by at most density x 0.0005 < 1e-4).
    for df in [*range(1, 61), 100, 1000]:
        assert abs(t_cdf(t_quantile(df), df) - 0.975) < 1e-4, df
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0)


def test_mean_ci_by_hand():
    # [0, 0.5, 1]: mean 0.5; std (ddof 1) = sqrt((0.25 + 0 + 0.25) / 2) = 0.5;
    # half-width = t(0.975, 2) * 0.5 / sqrt(3) = 4.303 * 0.288675 = 1.242169.
    interval = mean_ci([0.0, 0.5, 1.0])
    assert interval.n == 3 and interval.mean == pytest.approx(0.5)
    assert interval.half_width == pytest.approx(4.303 * 0.5 / math.sqrt(3))
    assert interval.half_width == pytest.approx(1.242169, abs=1e-6)
    assert mean_ci([0.25]) == Interval(0.25, None, 1)
    assert mean_ci([]) == Interval(None, None, 0)
    assert str(interval) == "0.500 ± 1.242" and str(mean_ci([0.25])) == "0.250 (n=1)"


def test_scenario_means_leave_out_failed_episodes():
    def episode(sid, reward, error=None):
        return Trajectory(scenario=Scenario(id=sid), reward=reward, error=error)

    episodes = [
        episode("a", 1.0),
        episode("a", 0.0),
        episode("b", 1.0),
        episode("b", 0.0, error="boom"),
        episode("c", 0.5, error="boom"),
    ]
    assert scenario_means(episodes) == {"a": 0.5, "b": 1.0}


def test_summarize_by_hand():
    baselines = {0: {"a": 0.0, "b": 0.5}, 1: {"a": 0.5, "b": 0.5}}

    def run(lr, seed, after):
        return {"lr": lr, "beta": 0.04, "seed": seed, "lr_used": lr, "beta_used": 0.04,
                "after": after, "kl": 0.01 * (seed + 1)}  # fmt: skip

    runs = [
        run(1e-4, 0, {"a": 0.0, "b": 0.5}),
        run(1e-3, 0, {"a": 1.0, "b": 0.5}),
        run(1e-4, 1, {"a": 0.5, "b": 0.5}),
        run(1e-3, 1, {"a": 0.5, "b": 1.0}),
    ]
    best, other = summarize(runs, baselines)
    assert (best["rank"], best["lr"], best["seeds"]) == (1, 1e-3, [0, 1])
    # after: [1, .5, .5, 1] -> mean .75, std .288675, half = 3.182 * .288675 / 2 = .459282.
    assert best["after"].mean == pytest.approx(0.75)
    assert best["after"].half_width == pytest.approx(0.459282, abs=1e-6)
    # change, per seed and scenario: [1-0, .5-.5, .5-.5, 1-.5] = [1, 0, 0, .5] -> mean .375;
    # deviations .625 -.375 -.375 .125, squares sum .6875, / 3 = .229167, std .478714;
    # half = 3.182 * .478714 / 2 = .761634.
    assert best["change"].mean == pytest.approx(0.375)
    assert best["change"].half_width == pytest.approx(0.761634, abs=1e-6)
    # before pools both seeds' baselines: [0, .5, .5, .5] -> .375.
    assert best["before"].mean == pytest.approx(0.375) == other["before"].mean
    assert best["kl"] == pytest.approx(0.015)
    assert (other["rank"], other["change"].mean) == (2, 0.0)


# --- a 1-step grid, end to end -----------------------------------------------------------


def test_a_one_step_grid_from_the_command_line(experiment, tmp_path, capsys):
    argv = ["sweep", str(experiment), "--lr", "1e-3", "auto", "--seeds", "0", "1"]
    assert main([*argv, "--steps", "1", "--output", "out"]) == 0
    printed = capsys.readouterr().out
    assert "| rank | lr | beta |" in printed and "auto (0.0002)" in printed
    out = tmp_path / "out"
    assert (out / "sweep.md").read_text().count("\n| ") == 3  # header + 2 settings
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["runs"]) == 4 and sorted(data["baselines"]) == ["0", "1"]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert {row["lr"] for row in rows} == {"0.001", "auto"}
    for row in rows:
        # Recomputed from the runs' own files: each seed's held-out episodes after training.
        lr = 1e-3 if row["lr"] == "0.001" else "auto"
        after, before = [], []
        for seed in (0, 1):
            run_dir = out / ("lr0.001" if lr == 1e-3 else "lrauto") / f"seed{seed}"
            assert json.loads((run_dir / "config.json").read_text())["optim"]["lr"] == (
                1e-3 if lr == 1e-3 else 2e-4
            )
            after += scenario_means(load_jsonl(run_dir / "eval_samples.jsonl")).values()
            start = load_jsonl(out / "before" / f"seed{seed}" / "eval_samples.jsonl")
            before += scenario_means(start).values()
            # The baseline is what the run's own first evaluation measured.
            first = read_metrics(run_dir)[0]
            assert first["step"] == 0
            assert first["eval/reward_mean"] == pytest.approx(
                sum(t.reward for t in start) / len(start)
            )
        expected = mean_ci(after)
        assert int(row["n"]) == len(after) == 6  # 2 seeds x 3 held-out scenarios
        assert float(row["after_mean"]) == pytest.approx(expected.mean, abs=1e-5)
        assert float(row["after_ci95"]) == pytest.approx(expected.half_width, abs=1e-5)
        assert float(row["before_mean"]) == pytest.approx(mean_ci(before).mean, abs=1e-5)


@pytest.mark.anyio
async def test_an_interrupted_sweep_keeps_its_runs_and_continues(experiment, tmp_path):
    def stop(record):
        raise KeyboardInterrupt

    first = Sweep(experiment, lrs=[1e-3, 3e-3], output_dir="out")
    with pytest.raises(KeyboardInterrupt):
        await first.run(on_run=stop)
    data = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [run["lr"] for run in data["runs"]] == [1e-3]
    assert "| 1 | 0.001 |" in (tmp_path / "out" / "sweep.md").read_text()

    trained = []
    again = Sweep(experiment, lrs=[1e-3, 3e-3], output_dir="out")
    rows = await again.run(on_run=trained.append)
    assert [record["lr"] for record in trained] == [3e-3]  # the finished run is reused
    assert sorted(row["lr"] for row in rows) == [1e-3, 3e-3]

    # Another experiment in the same directory would mix two sweeps: refused.
    with pytest.raises(ValueError, match=r"holds a sweep of other settings \(rollout\.num_gen"):
        Sweep(experiment, lrs=[1e-3], output_dir="out", overrides=["rollout.num_generations=4"])


@pytest.mark.anyio
async def test_a_diverging_run_is_a_result_and_the_sweep_goes_on(experiment, monkeypatch):
    from turnrl.experiment.build import Experiment
    from turnrl.training.errors import NonFiniteError

    train = Experiment.run

    async def run(self, **kwargs):
        if self.config.optim.lr == 3e-3:  # as when the gradients stay non-finite
            trainer = self.trainer()  # the run has claimed its directory by then
            trainer.metrics.close()
            trainer.close()
            raise NonFiniteError("non-finite gradients in 3 consecutive steps")
        return await train(self, **kwargs)

    monkeypatch.setattr(Experiment, "run", run)
    sweep = Sweep(experiment, lrs=[3e-3, 1e-3], output_dir="out")
    rows = await sweep.run()
    assert [row["lr"] for row in rows] == [1e-3, 3e-3]  # no reward after: ranked last
    assert rows[1]["failed"] == 1 and rows[1]["after"].mean is None
    assert sweep.runs[0]["error"] == "non-finite gradients in 3 consecutive steps"
    assert "| 2 | 0.003 | 0.04 | 1 (1 diverged) | " in (sweep.output_dir / "sweep.md").read_text()


def test_ctrl_c_on_the_command_line_says_how_to_continue(experiment, monkeypatch, capsys):
    def interrupt(record):
        raise KeyboardInterrupt

    monkeypatch.setattr("turnrl.cli.sweep._print_run", interrupt)
    assert main(["sweep", str(experiment), "--lr", "1e-3", "2e-3", "--output", "out"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; 1 finished runs are in out/sweep.md" in err
    assert "continue with: turnrl sweep" in err and "--lr 1e-3 2e-3 --output out" in err


# --- bad input: refused before anything runs ---------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "nothing to sweep"),
        ({"lrs": []}, "nothing to sweep"),
        ({"lrs": [0]}, r"--lr 0: a learning rate must be a positive number or 'auto'"),
        ({"lrs": [-1e-4]}, "--lr -0.0001: a learning rate must be a positive"),
        ({"lrs": ["fast"]}, "--lr 'fast': a learning rate must be"),
        ({"lrs": [float("nan")]}, "--lr nan: a learning rate must be"),
        ({"lrs": [1e-4, "1e-4"]}, "--lr 1e-4 is given twice"),
        ({"betas": [-0.1]}, "--beta -0.1: a KL coefficient must be a number >= 0"),
        ({"lrs": [1e-4], "seeds": [0, 0]}, "a seed is given twice"),
        ({"lrs": [1e-4], "seeds": []}, "give at least one seed"),
        ({"lrs": [1e-4], "steps": 0}, "--steps must be >= 1"),
        ({"lrs": [1e-4], "overrides": ["optim.lr=1"]}, "the sweep sets optim.lr .*use --lr"),
        ({"lrs": [1e-4], "overrides": ["optim={lr: 1}"]}, "the sweep sets optim.lr"),
        ({"lrs": [1e-4], "overrides": ["run.output_dir=x"]}, "use --output"),
        ({"lrs": [1e-4], "overrides": ["optim.nope=1"]}, r"optim\.nope"),
        ({"betas": [0.0], "overrides": ["algorithm.estimator=gvpo"]}, "beta"),
    ],
)
def test_bad_input_is_refused_with_the_fix(experiment, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sweep(experiment, output_dir="out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_an_experiment_without_held_out_scenarios_is_refused(experiment, tmp_path):
    text = experiment.read_text().replace("  eval_size: 3\n", "")
    experiment.write_text(text)
    with pytest.raises(ValueError, match=r"holds out no scenarios: add scenarios\.eval"):
        Sweep(experiment, lrs=[1e-4])


def test_a_directory_that_holds_something_else_is_refused(experiment, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"no sweep\.json, so it is not a sweep's directory"):
        Sweep(experiment, lrs=[1e-4], output_dir="out")


def test_bad_input_on_the_command_line_exits_with_2(experiment, capsys):
    assert main(["sweep", str(experiment), "--lr", "0"]) == 2
    assert "turnrl sweep: error: --lr 0" in capsys.readouterr().err
    assert main(["sweep", str(experiment)]) == 2
    assert "nothing to sweep" in capsys.readouterr().err
