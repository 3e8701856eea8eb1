"""Ctrl-C / SIGTERM during `turnrl train`: the first signal ends the step, writes a checkpoint
(with checkpoint_every=0) and the plot, prints how to resume and exits 130/143; a second
signal ends the process at once. The printed command resumes the run."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from turnrl.training.checkpoint import list_checkpoints
from turnrl.training.rundir import LOCK_NAME

ROOT = Path(__file__).parents[2]
CONFIG = "examples/configs/arithmetic_data.yaml"


def start_train(run_dir, *extra):
    args = ["--set", f"run.output_dir={run_dir}", "--set", "run.max_steps=400", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "turnrl.cli", "train", CONFIG, *args],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(run_dir, process, step=1, limit=180):
    """Block until metrics.jsonl holds training step ``step``."""
    deadline = time.monotonic() + limit
    metrics = Path(run_dir) / "metrics.jsonl"
    while True:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training did not reach the step"
        if metrics.exists():
            lines = [json.loads(line) for line in metrics.read_text().splitlines() if line]
            if any(r["step"] >= step and "rollout/reward_mean" in r for r in lines):
                return
        time.sleep(0.1)


def test_first_sigint_checkpoints_and_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    process = start_train(run_dir)
    wait_for_step(run_dir, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    line = [line for line in err.splitlines() if line.startswith("turnrl train: stopped")]
    assert len(line) == 1, err[-3000:]
    assert "stopped by SIGINT after step" in line[0] and "Traceback" not in err
    step = int(line[0].split("after step ")[1].split(",")[0])
    # A checkpoint of the last finished step, although run.checkpoint_every is 0.
    assert [p.name for p in list_checkpoints(run_dir)] == [f"step-{step:06d}"]
    records = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == step
    assert (run_dir / "metrics.png").exists() and not (run_dir / LOCK_NAME).exists()
    assert not (run_dir / "final").exists()  # the run is not finished

    # The printed command resumes it (here for one more step: a harmless change).
    command = shlex.split(line[0].split("resume with: ")[1])
    assert command[:3] == ["turnrl", "train", CONFIG] and command[-1] == "--resume"
    command[command.index("run.max_steps=400")] = f"run.max_steps={step + 1}"
    resumed = subprocess.run(
        [sys.executable, "-m", "turnrl.cli", *command[1:]],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records][-2:] == [step, step + 1]
    assert (run_dir / "final").is_dir()


def test_sigterm_exits_143_and_a_second_signal_exits_at_once(tmp_path):
    run_dir = tmp_path / "run"
    process = start_train(run_dir)
    wait_for_step(run_dir, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and list_checkpoints(run_dir)

    run_dir = tmp_path / "run2"
    process = start_train(run_dir, "--set", "rollout.num_generations=16")  # long steps
    wait_for_step(run_dir, process)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM  # killed by the signal, no clean-up
    assert time.monotonic() - sent < 10


def make_trainer(tiny_path, run_dir, **kwargs):
    import torch

    from turnrl.agents.engine import SamplingParams
    from turnrl.agents.transformers import TransformersAgent
    from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
    from turnrl.training.config import TrainingConfig
    from turnrl.training.trainer import Trainer

    torch.manual_seed(0)
    agent = TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=3))
    config = TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 1e-3, "warmup_steps": 1},
        generation={"max_new_tokens": 3},
        rollout={"scenarios_per_step": 2, "num_generations": 3},
        run={"output_dir": str(run_dir), "max_steps": 3, "plot": False},
    )
    return Trainer(agent, ArithmeticEnvironment(make_scenarios(n=6)), None, config, **kwargs)


@pytest.mark.anyio
async def test_the_step_in_flight_completes_and_the_resume_is_exact(tiny_path, tmp_path):
    from turnrl.logging import read_metrics
    from turnrl.training.errors import TrainingInterrupted

    await make_trainer(tiny_path, tmp_path / "straight").train()

    trainer = make_trainer(tiny_path, tmp_path / "stopped")
    step = trainer.step

    async def signalled_in_step_2(groups=None):
        if trainer.step_count == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step, like a Ctrl-C
        return await step(groups)

    trainer.step = signalled_in_step_2
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stopped:
        await trainer.train()
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    assert stopped.value.step == 2 and stopped.value.exit_code == 130
    assert stopped.value.checkpoint.name == "step-000002"  # with checkpoint_every=0

    await make_trainer(tiny_path, tmp_path / "stopped", resume=True).train()

    def comparable(run):
        return [{k: v for k, v in r.items() if "perf/" not in k} for r in read_metrics(run)]

    assert comparable(tmp_path / "stopped") == comparable(tmp_path / "straight")
