"""The run directory: one live run at a time, no run replaced unasked, no stale temp folders,
and a resume that checks the config against the checkpoint's and records what changed."""

import json
import os
import subprocess
import sys

import pytest
import torch

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.checkpoint import list_checkpoints
from turnrl.training.config import TrainingConfig
from turnrl.training.errors import ResumeConfigError
from turnrl.training.rundir import LOCK_NAME, RunDirError
from turnrl.training.trainer import Trainer


def make(tiny_path, run_dir, *, optim=None, **run):
    torch.manual_seed(0)
    agent = TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=3))
    config = TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 1e-3, "warmup_steps": 0, **(optim or {})},
        generation={"max_new_tokens": 3},
        rollout={"scenarios_per_step": 2, "num_generations": 2},
        run={"output_dir": str(run_dir), "max_steps": 2, "plot": False, **run},
    )
    return agent, ArithmeticEnvironment(make_scenarios(n=4)), config


@pytest.fixture
def finished_run(tiny_path, tmp_path):
    """A 2-step run with a checkpoint at step 2 and a final model."""
    run_dir = tmp_path / "run"
    agent, env, config = make(tiny_path, run_dir, checkpoint_every=2)
    import anyio

    anyio.run(Trainer(agent, env, None, config).train)
    return run_dir


def snapshot(run_dir):
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def test_a_directory_holding_a_run_is_refused_and_left_intact(tiny_path, finished_run):
    before = snapshot(finished_run)
    agent, env, config = make(tiny_path, finished_run)
    with pytest.raises(RunDirError, match=r"is not empty .*--resume.*--overwrite"):
        Trainer(agent, env, None, config)
    assert snapshot(finished_run) == before
    assert not (finished_run / LOCK_NAME).exists()  # released on the error


@pytest.mark.anyio
async def test_overwrite_replaces_the_old_run_entirely(tiny_path, finished_run):
    (finished_run / "notes.txt").write_text("mine")  # not a run file: kept
    agent, env, config = make(tiny_path, finished_run, overwrite=True, max_steps=1)
    await Trainer(agent, env, None, config).train()
    steps = [json.loads(line)["step"] for line in (finished_run / "metrics.jsonl").open()]
    assert steps == [1]  # the old run's steps 1 and 2 are gone
    assert list_checkpoints(finished_run) == []  # nothing a later --resume could mix in
    assert json.loads((finished_run / "config.json").read_text())["run"]["max_steps"] == 1
    assert (finished_run / "final").is_dir() and (finished_run / "notes.txt").exists()


@pytest.mark.anyio
async def test_a_second_trainer_on_a_live_run_names_the_holder(tiny_path, tmp_path):
    run_dir = tmp_path / "run"
    agent, env, config = make(tiny_path, run_dir)
    first = Trainer(agent, env, None, config)
    assert (run_dir / LOCK_NAME).read_text().strip() == str(os.getpid())
    agent2, env2, config2 = make(tiny_path, run_dir, overwrite=True)
    with pytest.raises(
        RunDirError, match=rf"another Trainer of this process \(pid {os.getpid()}\)"
    ):
        Trainer(agent2, env2, None, config2)
    await first.train()  # train() ends by releasing the directory
    assert not (run_dir / LOCK_NAME).exists()
    Trainer(agent2, env2, None, config2).close()


def test_a_run_in_another_process_is_named_by_its_pid(tiny_path, tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from turnrl.training.rundir import RunLock; "
            "lock = RunLock(sys.argv[1]); lock.acquire(); print('held', flush=True); "
            "time.sleep(60)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        agent, env, config = make(tiny_path, run_dir, overwrite=True)
        with pytest.raises(RunDirError, match=rf"in use by a live run \(pid {holder.pid}\)"):
            Trainer(agent, env, None, config)
    finally:
        holder.kill()
        holder.wait()
    # The lock died with its holder (SIGKILL: no clean-up ran), the stale file is no obstacle.
    assert (run_dir / LOCK_NAME).exists()
    Trainer(agent, env, None, config).close()


def test_output_dir_that_is_a_file_is_named(tiny_path, tmp_path):
    (tmp_path / "taken").write_text("a file")
    agent, env, config = make(tiny_path, tmp_path / "taken")
    with pytest.raises(RunDirError, match=r"taken is a file, not a directory"):
        Trainer(agent, env, None, config)


def test_stale_save_folders_are_removed_on_resume_but_not_under_a_live_run(tiny_path, finished_run):
    stale = finished_run / "checkpoints" / ".step-000003.k1ll3d"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    agent, env, config = make(tiny_path, finished_run)
    live = Trainer(agent, env, None, config, resume=True)
    assert not stale.exists()  # left by a save that was killed: removed on resume
    stale.mkdir()  # now a save of `live` in flight: another trainer must not touch it
    agent, env, config = make(tiny_path, finished_run)
    with pytest.raises(RunDirError, match="in use"):
        Trainer(agent, env, None, config, resume=True)
    assert stale.exists()
    live.close()
    agent, env, config = make(tiny_path, finished_run)
    Trainer(agent, env, None, config, resume=True).close()
    assert not stale.exists()
    assert [p.name for p in list_checkpoints(finished_run)] == ["step-000002"]


def test_a_changed_lr_is_refused_and_the_recorded_config_stays_true(tiny_path, finished_run):
    agent, env, config = make(tiny_path, finished_run, optim={"lr": 2e-3})
    with pytest.raises(ResumeConfigError, match=r"optim\.lr: 0\.001 -> 0\.002.*--force-resume"):
        Trainer(agent, env, None, config, resume=True)
    assert json.loads((finished_run / "config.json").read_text())["optim"]["lr"] == 1e-3
    assert not (finished_run / "config_history.jsonl").exists()


@pytest.mark.anyio
async def test_harmless_changes_apply_and_are_recorded(tiny_path, finished_run):
    agent, env, config = make(tiny_path, finished_run, checkpoint_every=2, max_steps=3, log_every=5)
    trainer = Trainer(agent, env, None, config, resume=True)
    await trainer.train()
    assert trainer.step_count == 3
    recorded = json.loads((finished_run / "config.json").read_text())
    assert recorded["run"]["max_steps"] == 3 and recorded["run"]["log_every"] == 5
    (history,) = [json.loads(line) for line in (finished_run / "config_history.jsonl").open()]
    assert history["step"] == 2 and history["forced"] is False
    assert history["changes"] == {"run.log_every": [1, 5], "run.max_steps": [2, 3]}


def test_a_forced_lr_change_is_applied_and_recorded(tiny_path, finished_run):
    agent, env, config = make(tiny_path, finished_run, optim={"lr": 2e-3})
    trainer = Trainer(agent, env, None, config, resume=True, force_resume=True)
    # The optimizer state held the old lr; the new one applies from the checkpoint's step.
    scheduler = trainer.optim.scheduler
    assert scheduler.base_lrs == [2e-3]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    assert trainer.optim.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * factor)
    trainer.close()
    assert json.loads((finished_run / "config.json").read_text())["optim"]["lr"] == 2e-3
    (history,) = [json.loads(line) for line in (finished_run / "config_history.jsonl").open()]
    assert history["forced"] is True and history["changes"]["optim.lr"] == [1e-3, 2e-3]


def test_stray_checkpoint_folders_are_ignored(tiny_path, finished_run):
    (finished_run / "checkpoints" / "step-best").mkdir()
    (finished_run / "checkpoints" / "step-000002.bak").mkdir()
    assert [p.name for p in list_checkpoints(finished_run)] == ["step-000002"]
    agent, env, config = make(tiny_path, finished_run)
    trainer = Trainer(agent, env, None, config, resume=True)
    assert trainer.resumed_from.name == "step-000002" and trainer.step_count == 2
    trainer.close()


def test_a_read_only_run_directory_is_named(tmp_path, monkeypatch):
    import errno

    from turnrl.training.rundir import RunLock

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "open", read_only)  # root ignores permission bits: fake the mount
    with pytest.raises(RunDirError, match=r"cannot write to run directory .*Read-only file"):
        RunLock(tmp_path / "run").acquire()
