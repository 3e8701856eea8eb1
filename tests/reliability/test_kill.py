"""SIGKILL a training process at random moments; every time the latest checkpoint loads
and training resumes from it, and the run finally completes with no temporary folder left."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from turnrl.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

WORKER = Path(__file__).with_name("kill_worker.py")
MAX_STEPS = 400  # far more than the kills leave time for: the run ends only when let


def start(run_dir, max_steps=MAX_STEPS):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = (Path(run_dir).parent / "worker.log").open("a")
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(run_dir), str(max_steps)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )


def wait_for_first_checkpoint(run_dir, process, limit=120):
    deadline = time.monotonic() + limit
    while latest_checkpoint(run_dir) is None:
        assert process.poll() is None, _log(run_dir)
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)


def test_sigkill_at_random_moments_never_loses_the_latest_checkpoint(tiny_path, tmp_path):
    run_dir = tmp_path / "run"
    rng = random.Random(0)
    steps_seen = []
    for kill in range(10):
        process = start(run_dir)
        if kill == 0:
            wait_for_first_checkpoint(run_dir, process)
        elif kill % 3 == 0:
            time.sleep(rng.uniform(0.5, 4.0))  # anywhere, loading included
        else:
            # Once it has loaded the checkpoint, let it train a little, then kill it
            # wherever it is: in a step or in a save (a save every step).
            assert process.stdout.readline().startswith("started at step"), _log(run_dir)
            time.sleep(rng.uniform(0.2, 3.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        latest = latest_checkpoint(run_dir)
        assert latest is not None
        # The latest checkpoint is complete and loads.
        step = _load_step(latest, tmp_path / f"probe-{kill}")
        steps_seen.append(step)
        for leftover in (run_dir / "checkpoints").iterdir():
            assert leftover.name.startswith(("step-", ".step-")), leftover
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0]
    assert len(list_checkpoints(run_dir)) <= 2  # keep_checkpoints
    # Left alone, the run resumes once more and finishes two steps later.
    process = start(run_dir, max_steps=steps_seen[-1] + 2)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out + _log(run_dir)
    assert f"started at step {steps_seen[-1]}" in out and "finished" in out
    assert _load_step(latest_checkpoint(run_dir), tmp_path / "probe-end") == steps_seen[-1] + 2
    # Saves killed half-way left temporary folders; the resumes removed them.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        p.name for p in list_checkpoints(run_dir)
    ]


def _log(run_dir):
    return (Path(run_dir).parent / "worker.log").read_text()[-3000:]


def _load_step(checkpoint, probe_dir):
    """Load the checkpoint into a fresh trainer the way a resume does; return its step."""
    from turnrl.agents.engine import SamplingParams
    from turnrl.agents.tiny import tiny_model_path
    from turnrl.agents.transformers import TransformersAgent
    from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
    from turnrl.training.config import TrainingConfig
    from turnrl.training.trainer import Trainer

    agent = TransformersAgent.from_pretrained(
        tiny_model_path(), sampling=SamplingParams(max_new_tokens=3)
    )
    config = TrainingConfig.load(checkpoint / "config.json")
    config = config.model_copy(
        update={"run": config.run.model_copy(update={"output_dir": str(probe_dir)})}
    )
    trainer = Trainer(agent, ArithmeticEnvironment(make_scenarios(n=8)), None, config)
    step = load_checkpoint(checkpoint, trainer.models, trainer.optim)["step"]
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    return step
