"""Hangs: finite default timeouts, sync rewards off the loop, a watchdog for a blocked loop."""

import threading
import time

import anyio
import pytest
import torch
from structlog.testing import capture_logs

import turnrl.watchdog
from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments import Environment, EnvTimeoutError, StepResult, Timeout
from turnrl.environments.base import scenario_from_options
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.rewards import reward_function, score_groups
from turnrl.rewards.combine import TimedReward
from turnrl.training.config import PROFILES, TrainingConfig
from turnrl.training.rollout import collect
from turnrl.training.trainer import Trainer
from turnrl.types import Scenario, Trajectory, TrajectoryGroup
from turnrl.watchdog import watch_event_loop


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_has_finite_env_and_reward_timeouts(profile):
    rollout = TrainingConfig.from_profile(profile).rollout
    assert 0 < rollout.env_timeout_s < float("inf")
    assert 0 < rollout.reward_timeout_s < float("inf")


@pytest.fixture
def agent(tiny_path):
    torch.manual_seed(0)
    return TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=3))


def config(tmp_path, **rollout):
    return TrainingConfig.from_profile(
        "balanced",
        generation={"max_new_tokens": 3},
        rollout={"scenarios_per_step": 2, "num_generations": 2, "max_failed_frac": 1.0, **rollout},
        eval={"num_generations": 2},
        run={"output_dir": str(tmp_path / "run"), "max_steps": 1},
    )


def test_the_default_config_bounds_env_and_reward_calls(agent, tmp_path):
    trainer = Trainer(
        agent, ArithmeticEnvironment(make_scenarios(n=2)), [lambda t: 1.0], config(tmp_path)
    )
    assert isinstance(trainer.env, Timeout) and trainer.env.seconds == 300.0
    assert isinstance(trainer.rewards, TimedReward) and trainer.rewards.seconds == 600.0


def group(n=2):
    scenario = Scenario(id="s")
    return TrajectoryGroup(scenario=scenario, trajectories=[Trajectory(scenario=scenario)] * n)


@pytest.mark.anyio
async def test_a_blocking_sync_reward_times_out_without_blocking_the_loop():
    @reward_function
    def sleepy(trajectory):
        time.sleep(2.0)  # a sync HTTP call that hangs
        return 1.0

    g = group()
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.02)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        metrics = await score_groups([g], sleepy, timeout_s=0.2)
        tg.cancel_scope.cancel()
    # On the loop, the two calls held it for 4 s and the deadline never fired.
    assert time.perf_counter() - started < 1.5
    assert ticks >= 3  # the loop kept running meanwhile
    assert metrics["reward/failed"] == 2.0
    assert all("sleepy: timed out after 0.2 s" in t.error for t in g)


@pytest.mark.anyio
async def test_evaluation_applies_the_reward_timeout(agent, tmp_path):
    @reward_function
    async def hangs(trajectory):
        await anyio.sleep(3600)

    scenarios = make_scenarios(n=2)
    cfg = config(tmp_path, reward_timeout_s=0.3)
    trainer = Trainer(
        agent, ArithmeticEnvironment(scenarios), [hangs], cfg, eval_scenarios=scenarios
    )
    with anyio.fail_after(20):  # evaluation had no reward timeout at all
        metrics = await trainer.evaluate()
    assert metrics["eval/failed"] == 4.0


class Sleepy(Environment):
    """Its step blocks the event loop with time.sleep (a sync client in async code)."""

    def __init__(self, scenarios, seconds):
        self.scenarios, self.seconds = list(scenarios), seconds

    async def reset(self, *, seed=None, options=None):
        return list(scenario_from_options(options).prompt), {}

    async def step(self, message):
        time.sleep(self.seconds)
        return StepResult([], 1.0, True, False, {})


@pytest.mark.anyio
async def test_the_watchdog_names_the_coroutine_that_blocks_the_rollout(tiny_agent, monkeypatch):
    monkeypatch.setattr(turnrl.watchdog, "BLOCK_THRESHOLD_S", 0.15)
    scenarios = make_scenarios(n=1)
    with capture_logs() as logs:
        await collect(tiny_agent, Sleepy(scenarios, 0.6), scenarios, 1)
    (blocked,) = [e for e in logs if e["event"] == "event_loop_blocked"]
    assert blocked["coroutine"] == "Sleepy.step" and blocked["phase"] == "rollout"
    assert "test_hangs.py" in blocked["at"] and "time.sleep" in blocked["stack"]
    assert "anyio.to_thread.run_sync" in blocked["fix"]


@pytest.mark.anyio
async def test_the_watchdog_names_a_blocking_async_reward(monkeypatch):
    monkeypatch.setattr(turnrl.watchdog, "BLOCK_THRESHOLD_S", 0.15)

    @reward_function
    async def judge(trajectory):
        time.sleep(0.3)  # a sync client inside an async reward
        return 1.0

    with capture_logs() as logs:
        await score_groups([group(1)], judge)
    (blocked,) = [e for e in logs if e["event"] == "event_loop_blocked"]
    assert blocked["phase"] == "reward" and blocked["coroutine"].endswith("judge")


@pytest.mark.anyio
async def test_the_watchdog_stays_quiet_while_the_loop_runs():
    with capture_logs() as logs, watch_event_loop(0.1) as watchdog:
        for _ in range(10):
            await anyio.sleep(0.03)
    assert watchdog.blocks == 0 and not logs
    assert not [t for t in threading.enumerate() if t.name == "turnrl-watchdog"]
    with pytest.raises(ValueError, match="passes through"), watch_event_loop(0.1):
        raise ValueError("passes through")  # not wrapped in an ExceptionGroup


@pytest.mark.anyio
async def test_a_step_that_blocked_past_its_limit_fails(tiny_agent):
    scenarios = make_scenarios(n=1)
    env = Timeout(Sleepy(scenarios, 0.3), 0.1)
    (g,) = await collect(tiny_agent, env, scenarios, 1)
    # The deadline could not fire during time.sleep; the late result is refused.
    assert g.trajectories[0].error.startswith("EnvTimeoutError: Sleepy.step() took")
    assert "blocking the event loop" in g.trajectories[0].error
    with pytest.raises(EnvTimeoutError):
        await env.clone().step(None)


@pytest.mark.anyio
async def test_an_abandoned_sync_reward_thread_is_a_daemon():
    @reward_function
    def stuck(trajectory):
        time.sleep(30)
        return 1.0

    await score_groups([group(1)], stuck, timeout_s=0.05)
    # A daemon thread does not hold the process open at exit; anyio's workers would.
    (thread,) = [t for t in threading.enumerate() if t.name == "turnrl-reward-stuck"]
    assert thread.daemon and thread.is_alive()
