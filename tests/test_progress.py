"""wandb in offline mode, the progress bar, and the end-of-run plot."""

import io
import json

import pytest

from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.logging import configure_logging
from turnrl.progress import Progress
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer

SECRET = "local-" + "5eC12e7" * 6


def config(tmp_path, wandb=True, **run):
    return TrainingConfig.from_profile(
        "balanced",
        generation={"max_new_tokens": 4},
        rollout={"scenarios_per_step": 2, "num_generations": 2},
        eval={"every": 1, "num_generations": 1},
        run={"max_steps": 2, "output_dir": str(tmp_path / "run"), "save_final": False, **run},
        wandb={"enabled": wandb, "mode": "offline", "name": "t", "tags": ["x", "y"]},
    )


@pytest.mark.anyio
async def test_wandb_offline_writes_a_run_with_config_and_sample_tables(
    tiny_agent, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_SILENT", "true")
    scenarios = make_scenarios(n=6)
    trainer = Trainer(
        tiny_agent,
        ArithmeticEnvironment(scenarios[2:]),
        None,
        config(tmp_path),
        eval_scenarios=scenarios[:2],
    )
    await trainer.train()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))
    tables = sorted((runs[0] / "files" / "media" / "table" / "eval").glob("samples_*.table.json"))
    assert len(tables) == 3  # before training and after each of the 2 steps
    table = json.loads(tables[-1].read_text())
    assert table["columns"][:3] == ["step", "scenario", "conversation"]
    assert "user: What is" in table["data"][0][2]
    binary = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert b"rollout/reward_mean" in binary and b"scenarios_per_step" in binary  # metrics, config
    # The API key never reaches a file of the run or the console.
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err


@pytest.mark.anyio
async def test_progress_bar_follows_rollout_update_and_eval(tiny_agent, tmp_path, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO")  # another test may have raised the level
    scenarios = make_scenarios(n=6)
    cfg = config(tmp_path, wandb=False, progress=True)
    trainer = Trainer(
        tiny_agent, ArithmeticEnvironment(scenarios[2:]), None, cfg, eval_scenarios=scenarios[:2]
    )
    await trainer.train()
    text = stream.getvalue()
    assert "rollout 4/4" in text and "eval 2/2" in text and "update 1/1" in text
    assert "2/2" in text and "step" in text  # the step counter reached the end
    assert "step    1 | reward" in text  # log lines still get through


def test_progress_shows_the_configured_eval_metric(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    progress = Progress(3, enabled=True, eval_key="eval/reward/env_return")
    progress.step_done({"rollout/reward_mean": 0.5, "eval/reward_mean": 0.75})
    assert "eval=" not in stream.getvalue()  # not the metric asked for
    progress.step_done({"eval/reward/env_return": 0.25})
    progress.close()
    assert "eval=0.250" in stream.getvalue()


def test_progress_is_silent_when_disabled(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    progress = Progress(3, enabled=False)
    progress.phase("rollout", 1, 2)
    progress.step_done({"rollout/reward_mean": 0.5})
    progress.close()
    assert stream.getvalue() == ""


@pytest.mark.anyio
async def test_plot_is_drawn_at_the_end_and_a_plot_failure_does_not_fail_the_run(
    tiny_agent, tmp_path, monkeypatch
):
    scenarios = make_scenarios(n=6)
    cfg = config(tmp_path, wandb=False)
    trainer = Trainer(tiny_agent, ArithmeticEnvironment(scenarios), None, cfg)
    await trainer.train()
    assert (tmp_path / "run" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def broken(run_dir):
        raise RuntimeError("no display")

    monkeypatch.setattr("turnrl.plots.plot_run", broken)
    cfg.run.output_dir = str(tmp_path / "r2")
    summary = await Trainer(tiny_agent, ArithmeticEnvironment(scenarios), None, cfg).train()
    assert summary["steps"] == 2
