"""DDP under torchrun on CPU (gloo, 2 processes): same update as one process, rank 0 writes,
a failing rank ends the job."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.distributed import DistributedContext, context_from_env, mean_metrics, shard
from turnrl.training.rollout import collect
from turnrl.types import flatten, save_jsonl

WORKER = Path(__file__).with_name("worker.py")


def test_context_from_env_and_shard():
    assert context_from_env({}) == DistributedContext(0, 1, 0)
    ctx = context_from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert ctx.enabled and not ctx.is_main
    assert shard(list("abcd"), ctx) == ["b", "d"]
    with pytest.raises(ValueError, match="do not split evenly over 2 ranks"):
        shard(list("abc"), ctx)
    with pytest.raises(ValueError, match="inconsistent"):
        context_from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="must be integers"):
        context_from_env({"WORLD_SIZE": "two"})
    assert mean_metrics({"a": 1.0}, DistributedContext()) == {"a": 1.0}


def run(args, nproc=None, timeout=300):
    """Run the worker alone or under torchrun; returns the completed process."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run(
        [*launcher, str(WORKER), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def groups_file(tiny_path, tmp_path_factory):
    """4 groups of 4 sampled episodes with spread rewards, saved for both runs.

    Group g's rewards are (g + 1) x (0, 0.5, 1, 0): each rank's groups have a
    reward std of their own, unlike the whole step's (scale_rewards="batch")."""
    torch.manual_seed(0)
    agent = TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=4))
    scenarios = make_scenarios(n=4, seed=2)

    async def go():
        return await collect(agent, ArithmeticEnvironment(scenarios), scenarios, 4)

    import anyio

    groups = anyio.run(go)
    for g, group in enumerate(groups):
        for i, t in enumerate(group.trajectories):
            t.reward = (g + 1) * float(i % 3) / 2  # spread, so advantages differ
    path = tmp_path_factory.mktemp("groups") / "groups.jsonl"
    save_jsonl(flatten(groups), path)
    return path


# Every estimator with a statistic over the whole step: scale_rewards="batch" takes the
# std of all ranks' rewards (grpo, rloo), GVPO normalizes by all ranks' groups.
VARIANTS = ["grpo", "grpo-batch", "rloo-batch", "gvpo"]


@pytest.fixture(scope="module")
def updates(groups_file, tmp_path_factory):
    """Each variant's parameter change from one process and from two (one run of each)."""
    out = {}
    for name, nproc in (("one", None), ("two", 2)):
        folder = tmp_path_factory.mktemp(name)
        done = run(["equivalence", groups_file, folder, *VARIANTS], nproc=nproc)
        assert done.returncode == 0, done.stderr[-3000:]
        out[name] = {v: load_file(folder / f"{v}.safetensors") for v in VARIANTS}
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_ranks_make_the_single_process_update(updates, variant):
    one, two = updates["one"][variant], updates["two"][variant]
    assert max(d.abs().max().item() for d in one.values()) > 1e-4  # a real update
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)


def test_two_process_training_run_writes_once(tiny_path, tmp_path):
    run_dir = tmp_path / "run"
    done = run(["train", run_dir], nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # eval before + 2 steps, written by rank 0 only
    # The stderr gathers both ranks' per-scenario means (a collective every rank joins).
    assert "eval/reward_mean_stderr" in json.loads(lines[0])
    assert (run_dir / "final" / "config.json").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json",
        "eval_samples.jsonl",
        "final",
        "metrics.jsonl",
        "metrics.png",
    ]


def test_a_failing_rank_ends_the_job_with_its_error(tiny_path, tmp_path):
    start = time.monotonic()
    done = run(["fail", tmp_path / "run"], nproc=2, timeout=240)
    assert done.returncode != 0
    assert "rank 1 fails on purpose in step 2" in done.stdout + done.stderr
    assert time.monotonic() - start < 240
